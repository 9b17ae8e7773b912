//! The gateway's side of a session's datagram channel (`transport_protocol
//! = "udp"`): its keys, and where and when the client's datagrams last came
//! from. The UDP socket is outside::udp.
//!
//! The client's UDP address is learned from its authentic datagrams (and
//! follows it when a NAT rebinds); the gateway sends datagrams only while
//! the client's have kept arriving, and otherwise uses the TLS stream.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cvpn_proto::datagram::{DatagramError, DatagramOffer, Opened, Opener, Sealer, key_pair};

/// The client probes every PROBE_EVERY; without any datagram from it for
/// this long, the path is taken for broken.
pub const PATH_TIMEOUT: Duration = Duration::from_secs(12);

pub struct DatagramPath {
    pub session: u64,
    opener: Mutex<Opener>,
    sealer: Mutex<Sealer>,
    /// The client's address, the gateway address it sent to, and when its
    /// last authentic datagram came.
    peer: Mutex<Option<Peer>>,
}

/// Where a session's datagrams go, and from which of the gateway's
/// addresses (the one the client sent to: a gateway listening on 0.0.0.0
/// must answer from it, or the client's connected socket drops the reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client's address and port.
    pub addr: SocketAddr,
    /// The gateway address its datagrams arrived at, when known.
    pub local: Option<Ipv4Addr>,
    seen: Instant,
}

impl DatagramPath {
    /// New random keys and a session id for which `taken` is false; None
    /// without system randomness. The gateway keeps its halves of the
    /// keys (consumed into its opener and sealer); the offer carries the
    /// client's.
    pub fn offer(port: u16, taken: impl Fn(u64) -> bool) -> Option<(DatagramPath, DatagramOffer)> {
        let session = loop {
            let mut id = [0u8; 8];
            getrandom::fill(&mut id).ok()?;
            let id = u64::from_be_bytes(id);
            if !taken(id) {
                break id;
            }
        };
        let (client_seals, gateway_opens) = key_pair()?;
        let (gateway_seals, client_opens) = key_pair()?;
        let path = DatagramPath {
            session,
            opener: Mutex::new(Opener::new(gateway_opens, session)),
            sealer: Mutex::new(Sealer::new(gateway_seals, session)),
            peer: Mutex::new(None),
        };
        let offer = DatagramOffer {
            port,
            session,
            to_gateway: client_seals,
            to_client: client_opens,
        };
        Some((path, offer))
    }

    /// Opens one datagram from `from`, which arrived at the gateway's
    /// `local` address. An authentic one keeps the path alive; only one
    /// with a new highest counter moves the client's address (a replayed
    /// or late copy sent from elsewhere cannot steer replies away).
    pub fn open<'a>(
        &self,
        datagram: &'a mut [u8],
        from: SocketAddr,
        local: Option<Ipv4Addr>,
        now: Instant,
    ) -> Result<Opened<'a>, DatagramError> {
        let opened = lock(&self.opener).open(datagram)?;
        let mut peer = lock(&self.peer);
        match peer.as_mut() {
            Some(p) if !opened.newest => p.seen = now,
            _ => {
                *peer = Some(Peer {
                    addr: from,
                    local,
                    seen: now,
                })
            }
        }
        Ok(opened)
    }

    /// Where to send datagrams, if the client's are still arriving.
    pub fn live_peer(&self, now: Instant) -> Option<Peer> {
        let peer = *lock(&self.peer);
        peer.filter(|p| now.saturating_duration_since(p.seen) < PATH_TIMEOUT)
    }

    pub fn seal(&self, kind: u8, payload: &[u8], out: &mut [u8]) -> Result<usize, DatagramError> {
        lock(&self.sealer).seal(kind, payload, out)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters and addresses stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvpn_proto::datagram::{KIND_PACKET, KIND_PROBE, OVERHEAD};

    #[test]
    fn the_path_lives_while_client_datagrams_arrive() {
        let (path, offer) = DatagramPath::offer(443, |_| false).unwrap();
        assert_eq!(offer.session, path.session);
        let t0 = Instant::now();
        assert_eq!(path.live_peer(t0), None);
        let mut client = Sealer::new(offer.to_gateway, offer.session);
        let mut d = [0u8; 64];
        let n = client.seal(KIND_PROBE, b"", &mut d).unwrap();
        let from: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let local = Some(Ipv4Addr::new(198, 18, 0, 1));
        let o = path.open(&mut d[..n], from, local, t0).unwrap();
        assert_eq!((o.kind, o.payload), (KIND_PROBE, &b""[..]));
        let addr = |p: Option<Peer>| p.map(|p| (p.addr, p.local));
        assert_eq!(
            addr(path.live_peer(t0 + Duration::from_secs(5))),
            Some((from, local))
        );
        assert_eq!(path.live_peer(t0 + PATH_TIMEOUT), None);

        // A forged datagram from elsewhere moves nothing.
        let n = client.seal(KIND_PACKET, b"hi", &mut d).unwrap();
        let mut late = d;
        d[n - 1] ^= 1;
        let other: SocketAddr = "203.0.113.9:1".parse().unwrap();
        assert!(path.open(&mut d[..n], other, None, t0).is_err());
        assert_eq!(addr(path.live_peer(t0)), Some((from, local)));

        // A real one from a new address (a NAT rebinding) moves the peer,
        // but an older one arriving late from elsewhere does not.
        let n2 = client.seal(KIND_PACKET, b"hi", &mut d).unwrap();
        path.open(&mut d[..n2], other, local, t0).unwrap();
        assert_eq!(addr(path.live_peer(t0)), Some((other, local)));
        path.open(&mut late[..n], from, local, t0).unwrap();
        assert_eq!(addr(path.live_peer(t0)), Some((other, local)));

        // What the gateway seals, the client opens.
        let mut back = [0u8; 64];
        let n = path.seal(KIND_PACKET, b"reply", &mut back).unwrap();
        assert_eq!(n, 5 + OVERHEAD);
        let mut opener = Opener::new(offer.to_client, offer.session);
        assert_eq!(opener.open(&mut back[..n]).unwrap().payload, b"reply");

        // A session id already in use is never handed out again.
        let tried = std::cell::RefCell::new(Vec::new());
        let (again, _) = DatagramPath::offer(443, |id| {
            tried.borrow_mut().push(id);
            tried.borrow().len() < 3
        })
        .unwrap();
        let tried = tried.into_inner();
        assert_eq!(tried.len(), 3);
        assert_eq!(again.session, tried[2]);
    }
}
