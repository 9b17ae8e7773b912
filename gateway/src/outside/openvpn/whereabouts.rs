//! Where the UDP side's OpenVPN clients are: by address, and by address
//! and session id (by peer id: udp.rs, in shards); and the rules of moving between addresses, as
//! OpenVPN's server has them (multi_process_float): a client floats onto
//! a free address, or onto one a session of the same certificate holds
//! (which then ends), never onto another certificate's. Pure: the shell
//! (udp.rs) supplies the clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::protocol::openvpn::packet::SessionId;

/// What the maps need to know of a client.
pub trait Whereabouts {
    /// Its control session id.
    fn sid(&self) -> SessionId;
    /// Its certificate's common name, once authenticated.
    fn identity(&self) -> Option<String>;
}

/// The outcome of a float.
pub enum Float<T> {
    /// Refused: another certificate's session holds the address.
    Refused,
    /// Moved; a session of the same certificate held the address and
    /// must end.
    Moved {
        /// The session that held the address.
        displaced: Option<Arc<T>>,
    },
}

/// The maps, kept consistent with each other.
pub struct Maps<T> {
    /// The client that holds each address: the one admitted last there
    /// (DATA_V1 packets, and no other certificate floats onto it).
    by_addr: HashMap<SocketAddr, Arc<T>>,
    /// Control packets go by address and the client's session id: a new
    /// session from a known address is a new client, not the old one's.
    by_sid: HashMap<(SocketAddr, SessionId), (Arc<T>, SocketAddr)>,
}

impl<T> Default for Maps<T> {
    fn default() -> Self {
        Maps {
            by_addr: HashMap::new(),
            by_sid: HashMap::new(),
        }
    }
}

impl<T: Whereabouts> Maps<T> {
    /// A new client at `addr`: it holds the address only if no one does.
    pub fn insert(&mut self, c: &Arc<T>, addr: SocketAddr) {
        self.by_sid.insert((addr, c.sid()), (c.clone(), addr));
        self.by_addr.entry(addr).or_insert_with(|| c.clone());
    }

    /// Forgets a client.
    pub fn remove(&mut self, c: &Arc<T>) {
        self.by_addr.retain(|_, u| !Arc::ptr_eq(u, c));
        self.by_sid.retain(|_, (u, _)| !Arc::ptr_eq(u, c));
    }

    /// The client of a control packet from `addr` with session id `sid`.
    pub fn by_sid(&self, addr: SocketAddr, sid: SessionId) -> Option<Arc<T>> {
        self.by_sid.get(&(addr, sid)).map(|(c, _)| c.clone())
    }

    /// The client that holds `addr`.
    pub fn by_addr(&self, addr: SocketAddr) -> Option<Arc<T>> {
        self.by_addr.get(&addr).cloned()
    }

    /// `c` sent an authentic packet from `to` (it was at `from`).
    pub fn float(&mut self, c: &Arc<T>, from: SocketAddr, to: SocketAddr) -> Float<T> {
        let displaced = match self.by_addr.get(&to) {
            Some(holder) if !Arc::ptr_eq(holder, c) => {
                let (a, b) = (holder.identity(), c.identity());
                if a.is_none() || a != b {
                    return Float::Refused;
                }
                Some(holder.clone())
            }
            _ => None,
        };
        if self.by_addr.get(&from).is_some_and(|h| Arc::ptr_eq(h, c)) {
            self.by_addr.remove(&from);
        }
        self.by_addr.insert(to, c.clone());
        self.by_sid.remove(&(from, c.sid()));
        self.by_sid.insert((to, c.sid()), (c.clone(), to));
        Float::Moved { displaced }
    }

    /// `c`, at `addr`, was admitted: it holds the address from now on;
    /// returns the other clients there, which must end (a client
    /// restarted on the same port, a carrier NAT reusing it).
    pub fn take_address(&mut self, c: &Arc<T>, addr: SocketAddr) -> Vec<Arc<T>> {
        self.by_addr.insert(addr, c.clone());
        self.by_sid
            .values()
            .filter(|(o, at)| *at == addr && !Arc::ptr_eq(o, c))
            .map(|(o, _)| o.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        sid: SessionId,
        cn: Option<&'static str>,
    }

    impl Whereabouts for Fake {
        fn sid(&self) -> SessionId {
            self.sid
        }
        fn identity(&self) -> Option<String> {
            self.cn.map(str::to_string)
        }
    }

    fn fake(n: u8, cn: Option<&'static str>) -> Arc<Fake> {
        Arc::new(Fake { sid: [n; 8], cn })
    }

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 2], port))
    }

    #[test]
    fn a_float_onto_another_certificates_address_is_refused() {
        let mut m = Maps::default();
        let (alice, bob) = (fake(1, Some("alice")), fake(2, Some("bob")));
        m.insert(&alice, at(1));
        m.insert(&bob, at(2));
        assert!(matches!(m.float(&bob, at(2), at(1)), Float::Refused));
        assert!(Arc::ptr_eq(&m.by_addr(at(1)).unwrap(), &alice));
        assert!(Arc::ptr_eq(&m.by_sid(at(2), [2; 8]).unwrap(), &bob));
        // An unauthenticated holder is not bob's either.
        let stranger = fake(3, None);
        m.insert(&stranger, at(3));
        assert!(matches!(m.float(&bob, at(2), at(3)), Float::Refused));
    }

    #[test]
    fn a_float_onto_a_free_or_same_certificate_address_moves() {
        let mut m = Maps::default();
        let (a1, a2) = (fake(1, Some("alice")), fake(2, Some("alice")));
        m.insert(&a1, at(1));
        m.insert(&a2, at(2));
        let Float::Moved { displaced } = m.float(&a2, at(2), at(1)) else {
            panic!("refused");
        };
        assert!(Arc::ptr_eq(&displaced.unwrap(), &a1));
        assert!(Arc::ptr_eq(&m.by_addr(at(1)).unwrap(), &a2));
        assert!(m.by_addr(at(2)).is_none());
        assert!(Arc::ptr_eq(&m.by_sid(at(1), [2; 8]).unwrap(), &a2));
        assert!(m.by_sid(at(2), [2; 8]).is_none());
        let Float::Moved { displaced } = m.float(&a2, at(1), at(9)) else {
            panic!("refused");
        };
        assert!(displaced.is_none());
    }

    #[test]
    fn a_new_session_at_an_address_takes_it_once_admitted() {
        let mut m = Maps::default();
        let (old, new) = (fake(1, Some("erin")), fake(2, Some("frank")));
        m.insert(&old, at(1));
        m.insert(&new, at(1));
        // Control packets go by session id; the address stays the old
        // one's until the new one is admitted.
        assert!(Arc::ptr_eq(&m.by_sid(at(1), [2; 8]).unwrap(), &new));
        assert!(Arc::ptr_eq(&m.by_addr(at(1)).unwrap(), &old));
        let ending = m.take_address(&new, at(1));
        assert_eq!(ending.len(), 1);
        assert!(Arc::ptr_eq(&ending[0], &old));
        assert!(Arc::ptr_eq(&m.by_addr(at(1)).unwrap(), &new));
        m.remove(&old);
        assert!(Arc::ptr_eq(&m.by_addr(at(1)).unwrap(), &new));
        assert!(m.by_sid(at(1), [1; 8]).is_none());
        assert!(m.by_sid(at(1), [2; 8]).is_some());
    }
}
