//! What the client adds to the host for a session and removes when it
//! exits: the tun device, routes (kept right by client route enforcement
//! while connected) and DNS.

use std::net::IpAddr;

use anyhow::Result;
use cvpn_client::netsetup::dns::{self, Dns};
use cvpn_client::netsetup::routes::{self, Netlink};
use cvpn_client::profile::Profile;
use cvpn_tundev::TunDevice;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::route::RouteMessage;
use tracing::{debug, warn};

use crate::tunnel::{Connected, RESOLV_CONF, TUN_NAME};

/// What the client added to the host: the tun device, routes, DNS. It
/// outlives a connection (OpenVPN's persist-tun): while the client
/// reconnects, traffic for the tunnel is held in the tun device's queue or
/// dropped, never sent in clear; it is removed only when the client exits.
pub struct HostSetup {
    pub tun: TunDevice,
    netlink: Netlink,
    /// Pinned paths and IPv6 blocks (full tunnel).
    routes: Vec<RouteMessage>,
    /// The routes into the tunnel, by destination.
    tunnel_routes: Vec<(Ipv4Net, RouteMessage)>,
    dns: Dns,
    /// What this set-up was made for.
    made_for: SetupFor,
}

/// What a session may change of the host set-up while it runs: the
/// routes into the tunnel.
pub struct RouteEditor<'a> {
    netlink: &'a Netlink,
    tunnel_routes: &'a mut Vec<(Ipv4Net, RouteMessage)>,
    made_for: &'a mut SetupFor,
}

impl RouteEditor<'_> {
    /// Makes the tunnel's routes exactly `routes` (a split tunnel's, as
    /// the endpoint pushed them while connected): removes the ones gone,
    /// adds the new ones.
    pub async fn apply(&mut self, routes: Vec<Ipv4Net>) -> Result<()> {
        if self.made_for.full_tunnel {
            return Ok(());
        }
        let want = routes::tunnel_destinations(&routes, false);
        let mut kept = Vec::new();
        for (dest, msg) in self.tunnel_routes.drain(..) {
            if want.contains(&dest) {
                kept.push((dest, msg));
            } else if let Err(e) = self.netlink.remove(msg).await {
                warn!("removing route {dest}: {e}");
            }
        }
        let index = self.netlink.link_index(TUN_NAME).await?;
        for dest in want {
            if !kept.iter().any(|(d, _)| *d == dest) {
                kept.push((dest, self.netlink.add(dest, index, None).await?));
            }
        }
        *self.tunnel_routes = kept;
        self.made_for.routes = routes;
        Ok(())
    }

    /// Client route enforcement (split tunnel): puts back a pushed route
    /// that was removed and removes a route that takes a pushed
    /// destination, or part of it, through another device. Returns what
    /// it did, for the log.
    pub async fn enforce(&mut self) -> Result<Vec<String>> {
        if self.made_for.full_tunnel {
            return Ok(Vec::new());
        }
        let tun = self.netlink.link_index(TUN_NAME).await?;
        let table = self.netlink.main_routes().await?;
        let pushed = routes::tunnel_destinations(&self.made_for.routes, false);
        let view: Vec<_> = table.iter().map(|r| (r.dest, r.oif)).collect();
        let (missing, conflicting) = routes::enforcement(&pushed, tun, &view);
        let mut done = Vec::new();
        for i in conflicting {
            let r = &table[i];
            self.netlink.remove(r.msg.clone()).await?;
            done.push(format!(
                "removed route {} through another device: it took traffic of a pushed route",
                r.dest
            ));
        }
        for dest in missing {
            let msg = self.netlink.add(dest, tun, None).await?;
            self.tunnel_routes.retain(|(d, _)| *d != dest);
            self.tunnel_routes.push((dest, msg));
            done.push(format!("restored pushed route {dest}"));
        }
        Ok(done)
    }
}

/// The parts of a pushed configuration the host set-up depends on, and
/// the gateway it reached.
#[derive(PartialEq, Eq)]
struct SetupFor {
    address: std::net::Ipv4Addr,
    prefix_len: u8,
    routes: Vec<Ipv4Net>,
    full_tunnel: bool,
    dns_servers: Vec<std::net::Ipv4Addr>,
    mtu: u16,
    /// Non-empty: this client is a site's router.
    client_networks: Vec<Ipv4Net>,
    /// Only matters in full tunnel, where its path is pinned.
    gateway: Option<IpAddr>,
}

impl SetupFor {
    fn of(c: &Connected) -> SetupFor {
        let cfg = &c.config;
        SetupFor {
            address: cfg.address,
            prefix_len: cfg.prefix_len,
            routes: cfg.routes.clone(),
            full_tunnel: cfg.full_tunnel,
            dns_servers: cfg.dns_servers.clone(),
            mtu: cfg.mtu,
            client_networks: cfg.client_networks.clone(),
            gateway: cfg.full_tunnel.then(|| c.peer.ip()),
        }
    }
}

impl HostSetup {
    /// Creates the tun device and installs routes and DNS for `c`. In full
    /// tunnel, the paths to `c`'s gateway and to every remote of the
    /// profile given as an address are pinned outside the tunnel first, so
    /// a reconnection reaches them.
    pub async fn apply(c: &Connected, profile: &Profile) -> Result<HostSetup> {
        let cfg = &c.config;
        let tun = TunDevice::create(
            TUN_NAME,
            cfg.address,
            std::net::Ipv4Addr::BROADCAST,
            cfg.mtu,
        )?;
        // The tunnel carries IPv4 only: without this the kernel sends its
        // IPv6 link-local chatter (router solicitations, MLD) into it.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{TUN_NAME}/disable_ipv6"),
            "1",
        );
        let netlink = Netlink::open()?;
        let mut setup = HostSetup {
            tun,
            netlink,
            routes: Vec::new(),
            tunnel_routes: Vec::new(),
            dns: Dns::None,
            made_for: SetupFor::of(c),
        };
        if let Err(e) = setup.install(c, profile).await {
            setup.teardown().await;
            return Err(e);
        }
        Ok(setup)
    }

    /// True if a new connection `c` needs exactly this set-up.
    pub fn fits(&self, c: &Connected) -> bool {
        self.made_for == SetupFor::of(c)
    }

    async fn install(&mut self, c: &Connected, profile: &Profile) -> Result<()> {
        let cfg = &c.config;
        let index = self.netlink.link_index(TUN_NAME).await?;
        if cfg.full_tunnel {
            // Pin the paths to the gateways outside the tunnel first.
            let mut pinned = Vec::new();
            let literal = profile.remotes.iter().filter_map(|r| r.host.parse().ok());
            for ip in std::iter::once(c.peer.ip()).chain(literal) {
                let Some(gw) = routes::gateway_ipv4(ip).filter(|g| !pinned.contains(g)) else {
                    continue;
                };
                pinned.push(gw);
                let (via, oif) = self.netlink.path_to(gw).await?;
                let host = Ipv4Net::new(gw, 32)?;
                self.routes.push(self.netlink.add(host, oif, via).await?);
            }
            self.routes.extend(self.netlink.block_ipv6().await?);
        }
        for dest in routes::tunnel_destinations(&cfg.routes, cfg.full_tunnel) {
            let msg = self.netlink.add(dest, index, None).await?;
            self.tunnel_routes.push((dest, msg));
        }
        // A site's router: its hosts' answers to clients go back through
        // the tunnel (the tun device's own address is a /32).
        let clients = Ipv4Net::new(cfg.address, cfg.prefix_len)?.trunc();
        if !cfg.client_networks.is_empty() && !cfg.full_tunnel && !cfg.routes.contains(&clients) {
            self.routes
                .push(self.netlink.add(clients, index, None).await?);
        }
        self.dns = dns::apply(
            &cfg.dns_servers,
            TUN_NAME,
            std::path::Path::new(RESOLV_CONF),
        )?;
        Ok(())
    }

    /// The tun device, and what may change while a session runs.
    pub fn split(&mut self) -> (&TunDevice, RouteEditor<'_>) {
        (
            &self.tun,
            RouteEditor {
                netlink: &self.netlink,
                tunnel_routes: &mut self.tunnel_routes,
                made_for: &mut self.made_for,
            },
        )
    }

    pub async fn teardown(mut self) {
        if let Err(e) = std::mem::replace(&mut self.dns, Dns::None).undo() {
            warn!("restoring DNS: {e}");
        }
        let tunnel = self
            .tunnel_routes
            .drain(..)
            .map(|(_, m)| m)
            .collect::<Vec<_>>();
        for r in tunnel.into_iter().chain(self.routes.drain(..).rev()) {
            if let Err(e) = self.netlink.remove(r).await {
                debug!("removing a route: {e}");
            }
        }
        drop(self.tun);
    }
}

/// Removes what a client that did not exit cleanly left behind.
pub async fn clear_stale() -> Result<()> {
    let nl = Netlink::open()?;
    let n = nl.remove_ours().await?;
    if n > 0 {
        warn!("removed {n} route(s) left by a previous cvpn-client");
    }
    if dns::clear_stale(std::path::Path::new(RESOLV_CONF))? {
        warn!("restored {RESOLV_CONF} left by a previous cvpn-client");
    }
    Ok(())
}
