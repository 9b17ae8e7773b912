//! The session registry: live sessions by tunnel address, whatever their
//! protocol. Packets from the tun device find their session here.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use super::session::Session;

/// Live sessions by tunnel address.
#[derive(Default)]
pub struct Registry {
    by_addr: RwLock<HashMap<Ipv4Addr, Arc<Session>>>,
}

impl Registry {
    /// Registers a session under its address.
    pub fn insert(&self, s: Arc<Session>) {
        self.by_addr
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.address, s);
    }

    /// Unregisters the session at `addr`.
    pub fn remove(&self, addr: Ipv4Addr) {
        self.by_addr
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
    }

    /// The session at `addr`.
    #[inline]
    pub fn get(&self, addr: Ipv4Addr) -> Option<Arc<Session>> {
        self.by_addr
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
    }

    /// Sessions registered.
    pub fn len(&self) -> usize {
        self.by_addr.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// No session registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.by_addr
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
