//! The client address pool: hosts of the client CIDR, minus the network
//! address, the gateway's own address (the first host) and the broadcast.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub struct Pool {
    net: Ipv4Net,
    used: Vec<u64>,
    /// Allocation moves round the pool so a released address is reused last:
    /// stale conntrack entries and caches of the old holder age out first.
    cursor: u32,
    free: u32,
}

impl Pool {
    pub fn new(net: Ipv4Net) -> Pool {
        let size = 1u64 << (32 - net.prefix_len());
        let mut pool = Pool {
            net: net.trunc(),
            used: vec![0; size.div_ceil(64) as usize],
            cursor: 2,
            free: 0,
        };
        let last = (size - 1) as u32;
        for reserved in [0, 1, last] {
            pool.mark(reserved, true);
        }
        pool.free = (size as u32).saturating_sub(3);
        pool
    }

    /// The gateway's address in the client CIDR (its tun address).
    pub fn gateway_address(&self) -> Ipv4Addr {
        self.addr(1)
    }

    pub fn free(&self) -> u32 {
        self.free
    }

    fn size(&self) -> u32 {
        (1u64 << (32 - self.net.prefix_len())) as u32
    }

    fn addr(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net.network()) + offset)
    }

    fn is_used(&self, offset: u32) -> bool {
        self.used[(offset / 64) as usize] & (1 << (offset % 64)) != 0
    }

    fn mark(&mut self, offset: u32, used: bool) {
        let word = &mut self.used[(offset / 64) as usize];
        if used {
            *word |= 1 << (offset % 64);
        } else {
            *word &= !(1 << (offset % 64));
        }
    }

    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        if self.free == 0 {
            return None;
        }
        let size = self.size();
        for step in 0..size {
            let offset = (self.cursor + step) % size;
            if !self.is_used(offset) {
                self.mark(offset, true);
                self.free -= 1;
                self.cursor = (offset + 1) % size;
                return Some(self.addr(offset));
            }
        }
        None
    }

    /// The offset of `addr` if it is a host the pool hands out.
    fn host_offset(&self, addr: Ipv4Addr) -> Option<u32> {
        if !self.net.contains(&addr) {
            return None;
        }
        let offset = u32::from(addr) - u32::from(self.net.network());
        (offset > 1 && offset != self.size() - 1).then_some(offset)
    }

    /// True if the pool hands out `addr` (in use or not).
    pub fn is_host(&self, addr: Ipv4Addr) -> bool {
        self.host_offset(addr).is_some()
    }

    /// Takes `addr` if it is a free host of the pool.
    pub fn take(&mut self, addr: Ipv4Addr) -> bool {
        match self.host_offset(addr) {
            Some(offset) if !self.is_used(offset) => {
                self.mark(offset, true);
                self.free -= 1;
                true
            }
            _ => false,
        }
    }

    /// Allocates an address for which `spoken_for` is false (another
    /// identity's lease), if there is one; else any free address.
    pub fn allocate_avoiding(&mut self, spoken_for: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        if self.free == 0 {
            return None;
        }
        let size = self.size();
        for step in 0..size {
            let offset = (self.cursor + step) % size;
            if !self.is_used(offset) && !spoken_for(self.addr(offset)) {
                self.mark(offset, true);
                self.free -= 1;
                self.cursor = (offset + 1) % size;
                return Some(self.addr(offset));
            }
        }
        self.allocate()
    }

    /// Moves where the next allocation starts looking to a place derived
    /// from `hint`: nodes of a cluster that allocate for different
    /// identities at once then rarely pick the same address.
    pub fn look_from(&mut self, hint: u64) {
        self.cursor = (hint % u64::from(self.size())) as u32;
    }

    /// Returns `addr` to the pool; reserved or foreign addresses are ignored.
    pub fn release(&mut self, addr: Ipv4Addr) {
        let Some(offset) = self.host_offset(addr).filter(|o| self.is_used(*o)) else {
            return;
        };
        self.mark(offset, false);
        self.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn never_hands_out_reserved_addresses() {
        let net: Ipv4Net = "10.250.0.0/22".parse().unwrap();
        let mut pool = Pool::new(net);
        assert_eq!(pool.gateway_address(), Ipv4Addr::new(10, 250, 0, 1));
        assert_eq!(pool.free(), 1021);
        let mut seen = HashSet::new();
        while let Some(a) = pool.allocate() {
            assert!(net.contains(&a));
            assert!(a != net.network() && a != net.broadcast() && a != pool.gateway_address());
            assert!(seen.insert(a), "{a} handed out twice");
        }
        assert_eq!(seen.len(), 1021);
        assert_eq!(pool.free(), 0);
    }

    #[test]
    fn released_addresses_come_back_last() {
        let mut pool = Pool::new("10.0.0.0/22".parse().unwrap());
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 2));
        pool.release(a);
        assert_ne!(pool.allocate().unwrap(), a);
        pool.release(b);
        pool.release(b);
        pool.release(Ipv4Addr::new(10, 0, 0, 1));
        pool.release(Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(pool.free(), 1021 - 1);
    }

    #[test]
    fn take_and_avoid() {
        let mut pool = Pool::new("10.0.0.0/22".parse().unwrap());
        let wanted = Ipv4Addr::new(10, 0, 1, 7);
        assert!(pool.take(wanted));
        assert!(!pool.take(wanted), "taken twice");
        assert!(!pool.take(Ipv4Addr::new(10, 0, 0, 1)), "gateway address");
        assert!(!pool.take(Ipv4Addr::new(10, 0, 3, 255)), "broadcast");
        assert!(!pool.take(Ipv4Addr::new(10, 9, 0, 9)), "foreign");
        let reserved = Ipv4Addr::new(10, 0, 0, 2);
        let a = pool.allocate_avoiding(|x| x == reserved).unwrap();
        assert_ne!(a, reserved);
        // Nothing else free: the reserved address goes after all.
        let mut pool = Pool::new("10.0.0.0/22".parse().unwrap());
        while pool.free() > 1 {
            pool.allocate_avoiding(|x| x == reserved);
        }
        assert_eq!(pool.allocate_avoiding(|x| x == reserved), Some(reserved));
    }

    #[test]
    fn exhaustion_and_reuse() {
        let mut pool = Pool::new("10.0.0.0/22".parse().unwrap());
        let all: Vec<_> = std::iter::from_fn(|| pool.allocate()).collect();
        assert!(pool.allocate().is_none());
        pool.release(all[500]);
        assert_eq!(pool.allocate(), Some(all[500]));
    }
}
