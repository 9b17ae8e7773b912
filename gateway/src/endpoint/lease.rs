//! Sticky client addresses: the pool plus a lease table that remembers
//! which address each identity (certificate common name) last had, so a
//! client gets it back after a reconnect, a session timeout or a gateway
//! restart while no one else holds it. The table is kept in `state_dir`
//! as JSON, replaced atomically.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pool::Pool;

/// The lease table's file name in `state_dir`.
pub const LEASE_FILE: &str = "leases.json";

/// A lease table file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The file is not a lease table.
    #[error("{}: not a lease table: {why}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Reading or writing failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct LeaseFile {
    leases: BTreeMap<String, Ipv4Addr>,
}

/// The pool and the lease table, changed together.
pub struct Leases {
    pool: Pool,
    by_identity: HashMap<String, Ipv4Addr>,
    holder: HashMap<Ipv4Addr, String>,
    /// Changed since the last snapshot.
    dirty: bool,
}

impl Leases {
    /// An empty lease table over `pool`.
    pub fn new(pool: Pool) -> Leases {
        Leases {
            pool,
            by_identity: HashMap::new(),
            holder: HashMap::new(),
            dirty: false,
        }
    }

    /// The gateway's own address in the client CIDR.
    pub fn gateway_address(&self) -> Ipv4Addr {
        self.pool.gateway_address()
    }

    /// Addresses free in the pool.
    pub fn free(&self) -> u32 {
        self.pool.free()
    }

    /// Leases remembered.
    pub fn len(&self) -> usize {
        self.by_identity.len()
    }

    /// No lease remembered.
    pub fn is_empty(&self) -> bool {
        self.by_identity.is_empty()
    }

    /// Restores leases from a snapshot; entries outside the pool's hosts
    /// (the client CIDR changed) or for an address already leased are
    /// dropped. Returns how many were kept.
    pub fn restore(&mut self, text: &str) -> Result<usize, String> {
        let file: LeaseFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for (identity, addr) in file.leases {
            if self.pool.is_host(addr) && !self.holder.contains_key(&addr) {
                self.holder.insert(addr, identity.clone());
                self.by_identity.insert(identity, addr);
            }
        }
        Ok(self.by_identity.len())
    }

    /// An address for `identity`: its leased one if that is free, else a
    /// free address no other identity holds a lease on (else any free one,
    /// whose lease moves). None: the pool is exhausted.
    pub fn assign(&mut self, identity: &str) -> Option<Ipv4Addr> {
        if let Some(&addr) = self.by_identity.get(identity)
            && self.pool.take(addr)
        {
            return Some(addr);
        }
        let holder = &self.holder;
        let addr = self
            .pool
            .allocate_avoiding(|a| holder.get(&a).is_some_and(|h| h != identity))?;
        if let Some(old) = self.by_identity.insert(identity.to_string(), addr) {
            self.holder.remove(&old);
        }
        if let Some(previous) = self.holder.insert(addr, identity.to_string())
            && previous != identity
        {
            self.by_identity.remove(&previous);
        }
        self.dirty = true;
        Some(addr)
    }

    /// Makes the next `assign` of a new identity look from a place
    /// derived from `hint` (see `Pool::look_from`).
    pub fn look_from(&mut self, hint: u64) {
        self.pool.look_from(hint);
    }

    /// `addr` for `identity` exactly (a cluster leased it so): taken from
    /// the pool and leased here too. None: it is in use on this gateway.
    pub fn assign_exact(&mut self, identity: &str, addr: Ipv4Addr) -> Option<Ipv4Addr> {
        if !self.pool.is_host(addr) || !self.pool.take(addr) {
            return None;
        }
        self.note_holder(addr, identity);
        Some(addr)
    }

    /// Records that `identity` holds the lease on `addr` (learnt from a
    /// cluster): `assign` then avoids it for others.
    pub fn note_holder(&mut self, addr: Ipv4Addr, identity: &str) {
        if self.holder.get(&addr).is_some_and(|h| h == identity) {
            return;
        }
        if let Some(previous) = self.holder.insert(addr, identity.to_string()) {
            self.by_identity.remove(&previous);
        }
        if let Some(old) = self.by_identity.insert(identity.to_string(), addr) {
            self.holder.remove(&old);
            self.holder.insert(addr, identity.to_string());
        }
        self.dirty = true;
    }

    /// Returns `addr` to the pool; its lease stays for the next session.
    pub fn release(&mut self, addr: Ipv4Addr) {
        self.pool.release(addr);
    }

    /// The table as JSON if it changed since the last call.
    pub fn take_snapshot(&mut self) -> Option<String> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let file = LeaseFile {
            leases: self
                .by_identity
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        };
        serde_json::to_string(&file).ok()
    }
}

/// Reads the lease table in `dir`, if there is one.
pub fn load(dir: &Path) -> Result<Option<String>, LeaseError> {
    let path = dir.join(LEASE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LeaseError::Io { path, source }),
    }
}

/// Replaces the lease table in `dir` atomically (a crash leaves the old or
/// the new table, never a torn one).
pub fn save(dir: &Path, text: &str) -> Result<(), LeaseError> {
    let path = dir.join(LEASE_FILE);
    std::fs::create_dir_all(dir).map_err(|source| LeaseError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    cvpn_pki::store::write_atomic(&path, text.as_bytes(), 0o600).map_err(|e| LeaseError::Io {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases() -> Leases {
        Leases::new(Pool::new("10.250.0.0/22".parse().unwrap()))
    }

    #[test]
    fn an_identity_gets_its_address_back() {
        let mut l = leases();
        let a = l.assign("alice").unwrap();
        let b = l.assign("bob").unwrap();
        l.release(a);
        l.release(b);
        // Bob reconnects first: he must not take alice's address.
        assert_eq!(l.assign("bob"), Some(b));
        assert_eq!(l.assign("alice"), Some(a));
        // A second session of alice while the first holds the address.
        let a2 = l.assign("alice").unwrap();
        assert_ne!(a2, a);
    }

    #[test]
    fn leases_survive_a_restart_and_keep_their_owners() {
        let mut l = leases();
        let a = l.assign("alice").unwrap();
        let b = l.assign("bob").unwrap();
        let snap = l.take_snapshot().unwrap();
        assert!(l.take_snapshot().is_none(), "unchanged: no new snapshot");
        let mut after = leases();
        assert_eq!(after.restore(&snap), Ok(2));
        // In the other order, as after a restart clients race back.
        assert_eq!(after.assign("bob"), Some(b));
        assert_eq!(after.assign("alice"), Some(a));
        // A newcomer avoids both leases.
        let c = after.assign("carol").unwrap();
        assert!(c != a && c != b);
    }

    #[test]
    fn a_smaller_pool_drops_what_no_longer_fits() {
        let snap =
            r#"{"leases":{"a":"10.250.3.200","b":"10.250.0.1","c":"10.250.0.9","d":"10.250.0.9"}}"#;
        let mut l = Leases::new(Pool::new("10.250.0.0/24".parse().unwrap()));
        assert_eq!(l.restore(snap), Ok(1));
        assert_eq!(l.assign("c"), Some(Ipv4Addr::new(10, 250, 0, 9)));
        assert!(l.restore("not json").is_err());
    }

    #[test]
    fn a_full_pool_moves_a_lease() {
        let mut l = Leases::new(Pool::new("10.250.0.0/22".parse().unwrap()));
        let first = l.assign("first").unwrap();
        l.release(first);
        for i in 0..1020 {
            assert!(l.assign(&format!("u{i}")).is_some());
        }
        // Only the first identity's leased address is free: it moves.
        assert_eq!(l.assign("late"), Some(first));
        assert_eq!(l.assign("late2"), None);
        l.release(first);
        assert_ne!(l.assign("first"), None);
    }
}
