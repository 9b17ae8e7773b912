//! The route table: longest-prefix match on the destination names the
//! target network (or `local` for client-to-client).

use std::net::Ipv4Addr;

use super::Lpm;
use crate::config::{Route, RouteTarget};

#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    lpm: Lpm<RouteTarget>,
}

impl RouteTable {
    pub fn compile(routes: &[Route]) -> RouteTable {
        let mut lpm = Lpm::default();
        for r in routes {
            // Config validation refuses duplicate destinations; first wins.
            lpm.entry_or_insert_with(r.destination, || r.target);
        }
        RouteTable { lpm }
    }

    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<RouteTarget> {
        self.lpm.lookup(dst).map(|(_, t)| *t)
    }
}
