//! Routes the client installs for what the endpoint pushes, over netlink.
//! Every route carries our own protocol number, so routes left by a client
//! that was killed are found and removed at the next start.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// "proto 179" in `ip route` output: cvpn-client's routes.
pub const PROTO: u8 = 179;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("no interface named {0}")]
    NoLink(String),
    #[error("no route to the gateway {0} outside the tunnel")]
    NoPathToGateway(Ipv4Addr),
    #[error("blocking IPv6 outside the full tunnel: {source}")]
    Block {
        #[source]
        source: rtnetlink::Error,
    },
    #[error("route {dest}: {source}")]
    Add {
        dest: Ipv4Net,
        #[source]
        source: rtnetlink::Error,
    },
}

pub struct Netlink {
    pub handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    pub fn open() -> Result<Netlink, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        Ok(Netlink {
            handle,
            task: tokio::spawn(conn),
        })
    }

    pub async fn link_index(&self, name: &str) -> Result<u32, RouteError> {
        match self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
        {
            Ok(Some(l)) => Ok(l.header.index),
            _ => Err(RouteError::NoLink(name.to_string())),
        }
    }

    /// How the kernel reaches `dst` now: (gateway, output interface).
    pub async fn path_to(&self, dst: Ipv4Addr) -> Result<(Option<Ipv4Addr>, u32), RouteError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let msg = self.handle.route().get(query).execute().try_next().await;
        let Ok(Some(msg)) = msg else {
            return Err(RouteError::NoPathToGateway(dst));
        };
        let mut gateway = None;
        let mut oif = None;
        for a in &msg.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Ok((gateway, oif.ok_or(RouteError::NoPathToGateway(dst))?))
    }

    fn message(dest: Ipv4Net, oif: u32, gateway: Option<Ipv4Addr>) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest.network(), dest.prefix_len())
            .output_interface(oif)
            .protocol(RouteProtocol::Other(PROTO));
        // As `ip route add` does: a route without a gateway is on-link.
        b = match gateway {
            Some(g) => b.gateway(g),
            None => b.scope(RouteScope::Link),
        };
        b.build()
    }

    /// Adds a route and returns it, for `remove`.
    pub async fn add(
        &self,
        dest: Ipv4Net,
        oif: u32,
        gateway: Option<Ipv4Addr>,
    ) -> Result<RouteMessage, RouteError> {
        let msg = Self::message(dest, oif, gateway);
        self.handle
            .route()
            .add(msg.clone())
            .execute()
            .await
            .map_err(|source| RouteError::Add { dest, source })?;
        Ok(msg)
    }

    /// Adds the two halves of the IPv6 address space as unreachable: while
    /// a full tunnel that carries no IPv6 is up (or reconnecting), IPv6
    /// fails at once on the client instead of leaving in clear.
    pub async fn block_ipv6(&self) -> Result<Vec<RouteMessage>, RouteError> {
        let mut added = Vec::new();
        for first in [
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0),
        ] {
            let msg = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(first, 1)
                .kind(RouteType::Unreachable)
                .protocol(RouteProtocol::Other(PROTO))
                .build();
            self.handle
                .route()
                .add(msg.clone())
                .execute()
                .await
                .map_err(|source| RouteError::Block { source })?;
            added.push(msg);
        }
        Ok(added)
    }

    pub async fn remove(&self, msg: RouteMessage) -> Result<(), RouteError> {
        Ok(self.handle.route().del(msg).execute().await?)
    }

    /// Deletes every IPv4 and IPv6 route carrying our protocol number.
    pub async fn remove_ours(&self) -> Result<usize, RouteError> {
        let mut routes = self.ipv4_routes().await?;
        // A host without IPv6 has no IPv6 routes to dump.
        if let Ok(v6) = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect::<Vec<RouteMessage>>()
            .await
        {
            routes.extend(v6);
        }
        let mut n = 0;
        for r in routes
            .into_iter()
            .filter(|r| r.header.protocol == RouteProtocol::Other(PROTO))
        {
            if self.handle.route().del(r).execute().await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A route of the main IPv4 table, as route enforcement looks at it.
pub struct TableRoute {
    /// Its destination.
    pub dest: Ipv4Net,
    /// Its output interface, if it has one.
    pub oif: Option<u32>,
    /// The route itself (to delete it).
    pub msg: RouteMessage,
}

/// The netlink groups of IPv4 route changes.
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

impl Netlink {
    /// Every IPv4 route of every table.
    async fn ipv4_routes(&self) -> Result<Vec<RouteMessage>, RouteError> {
        Ok(self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await?)
    }

    /// The unicast routes of the main IPv4 table.
    pub async fn main_routes(&self) -> Result<Vec<TableRoute>, RouteError> {
        let all = self.ipv4_routes().await?;
        Ok(all
            .into_iter()
            .filter(|r| r.header.table == RT_TABLE_MAIN && r.header.kind == RouteType::Unicast)
            .filter_map(|msg| {
                let mut dest = Ipv4Addr::UNSPECIFIED;
                let mut oif = None;
                for a in &msg.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dest = *d,
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                let dest = Ipv4Net::new(dest, msg.header.destination_prefix_length).ok()?;
                Some(TableRoute { dest, oif, msg })
            })
            .collect())
    }

    /// A connection subscribed to IPv4 route changes, and a stream that
    /// yields one item per change.
    pub fn watch() -> Result<(Netlink, impl futures::Stream + Unpin), RouteError> {
        use rtnetlink::sys::AsyncSocket;
        let (mut conn, handle, messages) =
            rtnetlink::new_connection().map_err(RouteError::Socket)?;
        conn.socket_mut()
            .socket_mut()
            .bind(&rtnetlink::sys::SocketAddr::new(0, RTMGRP_IPV4_ROUTE))
            .map_err(RouteError::Socket)?;
        let nl = Netlink {
            handle,
            task: tokio::spawn(conn),
        };
        Ok((nl, messages))
    }
}

/// What route enforcement must do to the table so that every pushed
/// destination goes through the tunnel (interface `tun`): the pushed
/// destinations without their route, and the indices of routes that take
/// a pushed destination or part of it through another interface (as
/// specific as it or more).
pub fn enforcement(
    pushed: &[Ipv4Net],
    tun: u32,
    table: &[(Ipv4Net, Option<u32>)],
) -> (Vec<Ipv4Net>, Vec<usize>) {
    let missing = pushed
        .iter()
        .filter(|d| !table.iter().any(|(t, oif)| t == *d && *oif == Some(tun)))
        .copied()
        .collect();
    let conflicting = table
        .iter()
        .enumerate()
        .filter(|(_, (t, oif))| {
            *oif != Some(tun)
                && pushed
                    .iter()
                    .any(|d| t.prefix_len() >= d.prefix_len() && d.contains(t))
        })
        .map(|(i, _)| i)
        .collect();
    (missing, conflicting)
}

/// Destinations of the routes a client installs through the tunnel.
pub fn tunnel_destinations(routes: &[Ipv4Net], full_tunnel: bool) -> Vec<Ipv4Net> {
    if full_tunnel {
        // Two halves are more specific than any default route, which stays
        // in place for the path to the gateway and comes back untouched.
        vec![
            Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 1).unwrap_or_default(),
            Ipv4Net::new(Ipv4Addr::new(128, 0, 0, 0), 1).unwrap_or_default(),
        ]
    } else {
        routes.to_vec()
    }
}

/// The gateway address to pin outside the tunnel, when it is IPv4.
pub fn gateway_ipv4(addr: IpAddr) -> Option<Ipv4Addr> {
    match addr {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_tunnel_is_two_halves() {
        let d = tunnel_destinations(&["10.0.0.0/8".parse().unwrap()], true);
        assert_eq!(
            d,
            vec![
                "0.0.0.0/1".parse::<Ipv4Net>().unwrap(),
                "128.0.0.0/1".parse().unwrap()
            ]
        );
        let d = tunnel_destinations(&["10.0.0.0/8".parse().unwrap()], false);
        assert_eq!(d, vec!["10.0.0.0/8".parse::<Ipv4Net>().unwrap()]);
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn enforcement_finds_removed_and_overriding_routes() {
        let pushed = [net("192.168.1.0/24"), net("10.20.0.0/16")];
        let table = [
            (net("0.0.0.0/0"), Some(2)),
            (net("198.18.0.0/24"), Some(2)),
            (net("192.168.1.0/24"), Some(9)),
            (net("192.168.1.0/25"), Some(2)),
            (net("10.20.5.0/24"), Some(9)),
            (net("10.20.0.0/16"), Some(2)),
        ];
        let (missing, conflicting) = enforcement(&pushed, 9, &table);
        // 10.20.0.0/16 exists but through another device: missing, and it
        // conflicts, as does a more specific route through another
        // device; one through the tunnel does not, nor anything outside.
        assert_eq!(missing, [net("10.20.0.0/16")]);
        assert_eq!(conflicting, [3, 5]);
    }
}
