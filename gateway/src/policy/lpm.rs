//! Longest-prefix match over IPv4 prefixes: one hash map per prefix length
//! present, probed from the longest length down. A lookup costs one masked
//! hash probe per distinct prefix length (at most 33), whatever the number
//! of prefixes.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The prefixes of one length: network address -> (prefix, value).
type Level<V> = HashMap<u32, (Ipv4Net, V)>;

#[derive(Clone, Debug)]
pub struct Lpm<V> {
    /// (prefix length, its prefixes), longest first.
    levels: Vec<(u8, Level<V>)>,
}

impl<V> Default for Lpm<V> {
    fn default() -> Self {
        Lpm { levels: Vec::new() }
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

impl<V> Lpm<V> {
    /// The value stored for exactly `net`, created with `make` if absent.
    pub fn entry_or_insert_with(&mut self, net: Ipv4Net, make: impl FnOnce() -> V) -> &mut V {
        let net = net.trunc();
        let len = net.prefix_len();
        let pos = match self.levels.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(p) => p,
            Err(p) => {
                self.levels.insert(p, (len, HashMap::new()));
                p
            }
        };
        &mut self.levels[pos]
            .1
            .entry(u32::from(net.network()))
            .or_insert_with(|| (net, make()))
            .1
    }

    pub fn get_exact(&self, net: Ipv4Net) -> Option<&V> {
        let net = net.trunc();
        self.levels
            .iter()
            .find(|(l, _)| *l == net.prefix_len())
            .and_then(|(_, m)| m.get(&u32::from(net.network())))
            .map(|(_, v)| v)
    }

    /// The most specific prefix containing `addr`, and its value.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<(&Ipv4Net, &V)> {
        let a = u32::from(addr);
        self.levels
            .iter()
            .find_map(|(len, map)| map.get(&(a & mask(*len))))
            .map(|(n, v)| (n, v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Ipv4Net, &V)> {
        self.levels
            .iter()
            .flat_map(|(_, m)| m.values().map(|(n, v)| (n, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut t = Lpm::default();
        for (net, v) in [
            ("0.0.0.0/0", 0),
            ("10.0.0.0/8", 8),
            ("10.1.0.0/16", 16),
            ("10.1.2.3/32", 32),
        ] {
            *t.entry_or_insert_with(net.parse().unwrap(), || 0) = v;
        }
        let get = |a: &str| *t.lookup(a.parse().unwrap()).unwrap().1;
        assert_eq!(get("10.1.2.3"), 32);
        assert_eq!(get("10.1.2.4"), 16);
        assert_eq!(get("10.2.0.1"), 8);
        assert_eq!(get("8.8.8.8"), 0);
        assert_eq!(t.get_exact("10.1.0.0/16".parse().unwrap()), Some(&16));
        assert_eq!(t.iter().count(), 4);
    }

    #[test]
    fn empty_table_matches_nothing() {
        let t: Lpm<()> = Lpm::default();
        assert!(t.lookup(Ipv4Addr::new(1, 2, 3, 4)).is_none());
    }
}
