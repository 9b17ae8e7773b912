//! Per-packet policy, as pure code: anti-spoofing, the route table and the
//! authorization rules, compiled from a validated configuration.

mod authz;
mod lpm;
mod routes;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use authz::{AuthRules, GroupMask};
pub use lpm::Lpm;
pub use routes::RouteTable;

use crate::config::{Config, RouteTarget};

/// What to do with one packet a client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward(RouteTarget),
    /// An IPv6 packet: the tunnel carries IPv4 only (a stock client's tun
    /// device sends its IPv6 link-local chatter anyway).
    Ipv6,
    /// Not IP, or an IPv4 header the kernel would refuse: too short, a
    /// header length beyond the packet, a total length other than the
    /// packet's.
    Malformed,
    /// The source is not the client's assigned address.
    Spoofed,
    /// No route: ICMP net unreachable goes back.
    NoRoute,
    /// No authorization rule allows it: ICMP administratively prohibited.
    Denied,
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub client_cidr: Ipv4Net,
    pub routes: RouteTable,
    pub rules: AuthRules,
    /// Networks behind clients: (index into `Config::client_networks`,
    /// the common name whose session carries it).
    pub client_networks: Lpm<(usize, String)>,
    /// The common name carrying each client network, by index.
    pub carriers: Vec<String>,
    /// Which compilation this is: group masks are only valid with the
    /// policy of their generation (a reload numbers groups anew).
    pub generation: u64,
}

impl Policy {
    pub fn compile(config: &Config) -> Result<Policy, authz::TooManyGroups> {
        Ok(Policy {
            client_cidr: config.client_cidr,
            routes: RouteTable::compile(&config.routes),
            rules: AuthRules::compile(&config.rules)?,
            client_networks: config.client_networks.iter().enumerate().fold(
                Lpm::default(),
                |mut lpm, (i, n)| {
                    lpm.entry_or_insert_with(n.cidr, || (i, n.common_name.clone()));
                    lpm
                },
            ),
            carriers: config
                .client_networks
                .iter()
                .map(|n| n.common_name.clone())
                .collect(),
            generation: 0,
        })
    }

    /// The client network containing `addr`: its index and the common
    /// name whose session carries it.
    #[inline]
    pub fn client_network(&self, addr: Ipv4Addr) -> Option<(usize, &str)> {
        self.client_networks
            .lookup(addr)
            .map(|(_, (i, cn))| (*i, cn.as_str()))
    }

    /// Where a packet the policy admitted as a reply goes: a client
    /// address is delivered in the gateway; others follow the route table.
    pub fn reply_target(&self, dst: Ipv4Addr) -> Option<RouteTarget> {
        if self.client_cidr.contains(&dst) {
            return Some(RouteTarget::Local);
        }
        self.routes.lookup(dst)
    }

    /// The compiled form of a client's groups, valid with this policy.
    pub fn group_mask(&self, groups: &[String]) -> GroupMask {
        self.rules.mask_of(groups)
    }

    /// Decides the fate of `packet`, sent by the client holding `client`
    /// with the certificate `common_name` (which may send from the client
    /// networks it carries). Reads only the version, lengths, source and
    /// destination.
    #[inline]
    pub fn check(
        &self,
        packet: &[u8],
        client: Ipv4Addr,
        common_name: &str,
        groups: GroupMask,
    ) -> Verdict {
        if packet.first().is_some_and(|b| b >> 4 == 6) && packet.len() >= 40 {
            return Verdict::Ipv6;
        }
        let Some(header) = packet.get(..20) else {
            return Verdict::Malformed;
        };
        let header_len = usize::from(header[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if header[0] >> 4 != 4
            || header_len < 20
            || header_len > packet.len()
            || total_len != packet.len()
        {
            return Verdict::Malformed;
        }
        let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
        let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
        if src != client
            && self
                .client_network(src)
                .is_none_or(|(_, cn)| cn != common_name)
        {
            return Verdict::Spoofed;
        }
        let Some(target) = self.routes.lookup(dst) else {
            return Verdict::NoRoute;
        };
        if !self.rules.allows(dst, groups) {
            return Verdict::Denied;
        }
        Verdict::Forward(target)
    }
}
