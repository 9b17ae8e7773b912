//! A map split into shards, each behind its own reader-writer lock: what
//! every packet thread looks up for every packet (a session by address,
//! an OpenVPN client by peer id, a cvpn/1 datagram channel by id). Lookups of keys in different shards
//! touch different locks, so threads serving different clients do not
//! share a lock's cache line; writes (a session comes or goes) lock one
//! shard.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::Ipv4Addr;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Shards of a map (a power of two).
const SHARDS: usize = 64;

/// A key that says which shard it lives in: its low bits, which differ
/// between neighbours (addresses of a pool, peer ids handed out in turn).
pub trait ShardKey: Hash + Eq {
    /// Any number; its low bits pick the shard.
    fn shard_bits(&self) -> usize;
}

impl ShardKey for Ipv4Addr {
    fn shard_bits(&self) -> usize {
        u32::from(*self) as usize
    }
}

impl ShardKey for u64 {
    fn shard_bits(&self) -> usize {
        *self as usize
    }
}

impl ShardKey for u32 {
    fn shard_bits(&self) -> usize {
        *self as usize
    }
}

/// A map of `K` to `V` in [`SHARDS`] shards.
pub struct ShardedMap<K, V> {
    shards: Box<[RwLock<HashMap<K, V>>]>,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl<K: ShardKey, V: Clone> ShardedMap<K, V> {
    fn read(&self, key: &K) -> RwLockReadGuard<'_, HashMap<K, V>> {
        let shard = &self.shards[key.shard_bits() & (SHARDS - 1)];
        shard.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, key: &K) -> RwLockWriteGuard<'_, HashMap<K, V>> {
        let shard = &self.shards[key.shard_bits() & (SHARDS - 1)];
        shard.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<V> {
        self.read(key).get(key).cloned()
    }

    /// Sets `key` to `value`; the value it had.
    pub fn insert(&self, key: K, value: V) -> Option<V> {
        self.write(&key).insert(key, value)
    }

    /// Removes `key`; the value it had.
    pub fn remove(&self, key: &K) -> Option<V> {
        self.write(key).remove(key)
    }

    /// Removes `key` if `matches` its value; the value removed.
    pub fn remove_if(&self, key: &K, matches: impl FnOnce(&V) -> bool) -> Option<V> {
        let mut shard = self.write(key);
        if shard.get(key).is_some_and(matches) {
            return shard.remove(key);
        }
        None
    }

    /// Entries now (each shard read in turn).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every value now (each shard read in turn).
    pub fn values(&self) -> Vec<V> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            out.extend(
                s.read()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_land_in_different_shards_and_all_are_found() {
        let m: ShardedMap<u32, u32> = ShardedMap::default();
        for k in 0..200 {
            assert_eq!(m.insert(k, k * 2), None);
        }
        assert_eq!(m.len(), 200);
        assert_eq!(m.get(&7), Some(14));
        assert_eq!(m.remove_if(&7, |v| *v == 0), None);
        assert_eq!(m.remove_if(&7, |v| *v == 14), Some(14));
        assert_eq!(m.remove(&8), Some(16));
        assert_eq!(m.get(&8), None);
        let mut v = m.values();
        v.sort();
        assert_eq!(v.len(), 198);
        assert_eq!(v[0], 0);
        assert_ne!(1u32.shard_bits() & 63, 2u32.shard_bits() & 63);
    }
}
