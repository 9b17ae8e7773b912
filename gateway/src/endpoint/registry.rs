//! The session registry: live sessions by tunnel address, whatever their
//! protocol, and by common name (the carriers of client networks).
//! Packets from the tun device find their session here.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use super::session::Session;
use super::sharded::ShardedMap;

/// Live sessions by tunnel address.
#[derive(Default)]
pub struct Registry {
    /// Read for every packet toward a client, by every packet thread.
    by_addr: ShardedMap<Ipv4Addr, Arc<Session>>,
    /// Each common name's sessions, oldest first.
    by_name: RwLock<HashMap<String, Vec<Arc<Session>>>>,
}

impl Registry {
    /// Registers a session under its address.
    pub fn insert(&self, s: Arc<Session>) {
        self.by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(s.common_name.clone())
            .or_default()
            .push(s.clone());
        self.by_addr.insert(s.address, s);
    }

    /// Unregisters the session at `addr`.
    pub fn remove(&self, addr: Ipv4Addr) {
        let gone = self.by_addr.remove(&addr);
        let Some(gone) = gone else { return };
        let mut names = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = names.get_mut(&gone.common_name) {
            list.retain(|s| !Arc::ptr_eq(s, &gone));
            if list.is_empty() {
                names.remove(&gone.common_name);
            }
        }
    }

    /// The newest session of `common_name`: the one that carries its
    /// client networks.
    #[inline]
    pub fn carrier(&self, common_name: &str) -> Option<Arc<Session>> {
        self.by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(common_name)
            .and_then(|list| list.last())
            .cloned()
    }

    /// The session at `addr`.
    #[inline]
    pub fn get(&self, addr: Ipv4Addr) -> Option<Arc<Session>> {
        self.by_addr.get(&addr)
    }

    /// Sessions registered.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// No session registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.by_addr.values()
    }
}
