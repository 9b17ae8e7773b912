//! Live configuration (SIGHUP, `cvpn-gw reload`): the file is read and
//! validated whole, and either swapped in at once (routes and rules apply
//! to open sessions from their next packet) or refused with why, the
//! running configuration untouched. What the running endpoint is built
//! on (its addresses, TLS identity, host set-up) needs a restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::Endpoint;
use crate::config::Config;
use crate::policy::Policy;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The endpoint was not started from a file.
    #[error("the endpoint was not started from a configuration file")]
    NoFile,
    /// The file is not a valid configuration.
    #[error("{0}")]
    Invalid(String),
    /// The host's routes and nftables table could not follow the new
    /// client networks (the running configuration stays).
    #[error("the host set-up for the new client_networks failed: {0}")]
    Host(String),
    /// A key that only a restart can change was changed.
    #[error("needs a restart: {0} changed (the running configuration stays)")]
    NeedsRestart(String),
}

/// The keys that differ and only a restart can change.
pub fn restart_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key, same: bool| {
        if !same {
            keys.push(key);
        }
    };
    check("listen", old.listen == new.listen);
    check("client_cidr", old.client_cidr == new.client_cidr);
    check(
        "transport_protocol",
        old.transport_protocol == new.transport_protocol,
    );
    check("tls", old.tls == new.tls);
    check("control_socket", old.control_socket == new.control_socket);
    check("state_dir", old.state_dir == new.state_dir);
    check("connection_log", old.connection_log == new.connection_log);
    // Turning it on also changes a sysctl the host set-up records.
    check("flow_log", old.flow_log == new.flow_log);
    check("data_threads", old.data_threads == new.data_threads);
    check("metrics_listen", old.metrics_listen == new.metrics_listen);
    check("cluster", old.cluster == new.cluster);
    // The nftables table is built from the interfaces and ENI addresses.
    let host = |c: &Config| {
        c.target_networks
            .iter()
            .map(|t| {
                (
                    t.id.clone(),
                    t.interface.clone(),
                    t.eni_address,
                    t.snat,
                    t.alias_cidr,
                    t.vpc_cidr,
                )
            })
            .collect::<Vec<_>>()
    };
    check("target_networks", host(old) == host(new));
    keys
}

/// What clients are told of routing: full tunnel, the routes of a split
/// tunnel (with who carries each client network), DNS servers.
#[derive(PartialEq, Eq)]
struct Pushed<'a> {
    full_tunnel: bool,
    routes: Vec<(ipnet::Ipv4Net, Option<&'a str>)>,
    dns_servers: &'a [std::net::Ipv4Addr],
}

fn pushed(c: &Config) -> Pushed<'_> {
    let routes = if c.split_tunnel {
        c.routes
            .iter()
            .map(|r| {
                let carrier = match r.target {
                    crate::config::RouteTarget::ClientNetwork(i) => {
                        Some(c.client_networks[i].common_name.as_str())
                    }
                    _ => None,
                };
                (r.destination, carrier)
            })
            .collect()
    } else {
        Vec::new()
    };
    Pushed {
        full_tunnel: !c.split_tunnel,
        routes,
        dns_servers: &c.dns_servers,
    }
}

/// The keys that differ and apply live.
fn changed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key, same: bool| {
        if !same {
            keys.push(key);
        }
    };
    check("routes", old.routes == new.routes);
    check("authorization_rules", old.rules == new.rules);
    check("flow_log_rate", old.flow_log_rate == new.flow_log_rate);
    check(
        "client_networks",
        old.client_networks == new.client_networks,
    );
    check("split_tunnel", old.split_tunnel == new.split_tunnel);
    check("dns_servers", old.dns_servers == new.dns_servers);
    check("banner", old.banner == new.banner);
    check(
        "session_timeout",
        old.session_timeout == new.session_timeout,
    );
    check(
        "max_sessions_per_identity",
        old.max_sessions_per_identity == new.max_sessions_per_identity,
    );
    check(
        "max_connections",
        old.max_connections == new.max_connections,
    );
    check(
        "handshake_rate_per_source",
        old.handshake_rate_per_source == new.handshake_rate_per_source,
    );
    keys
}

impl Endpoint {
    /// Re-reads the configuration file and swaps it in whole, or refuses
    /// it. Ok: the keys that changed.
    pub fn reload(&self) -> Result<Vec<&'static str>, ReloadError> {
        let outcome = self.try_reload();
        match &outcome {
            Ok(keys) => {
                self.tally.count_reload(true);
                info!(changed = ?keys, "configuration reloaded");
            }
            Err(e) => {
                self.tally.count_reload(false);
                warn!(error = %e, "configuration reload refused");
            }
        }
        outcome
    }

    fn try_reload(&self) -> Result<Vec<&'static str>, ReloadError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.source.as_ref().ok_or(ReloadError::NoFile)?;
        let new = Config::load(path).map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let old = self.config();
        let fixed = restart_keys(&old, &new);
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(fixed.join(", ")));
        }
        let mut policy = Policy::compile(&new)
            .map_err(|e| ReloadError::Invalid(format!("authorization_rules: {e}")))?;
        policy.generation = self.policy.load().generation + 1;
        let changed = changed_keys(&old, &new);
        let (before, after) = (pushed(&old), pushed(&new));
        let same_mode =
            before.full_tunnel == after.full_tunnel && before.dns_servers == after.dns_servers;
        let route_change = before != after;
        drop((before, after));
        if old.client_networks != new.client_networks
            && let Some(host) = self.host.get()
        {
            host(&new).map_err(ReloadError::Host)?;
        }
        drop(old);
        // The policy goes in with the configuration it was compiled
        // from; each session's group mask follows the policy's generation.
        self.config.store(Arc::new(new));
        self.policy.store(Arc::new(policy));
        let new = self.config();
        if route_change {
            let generation = self.routes_generation.fetch_add(1, Ordering::Relaxed) + 1;
            // Only the route list of a split tunnel can change live.
            if same_mode && new.split_tunnel {
                let taken = self
                    .sessions
                    .all()
                    .iter()
                    .filter(|s| s.update_routes(&new.pushed_routes(&s.common_name), generation))
                    .count();
                info!(sessions = taken, "new routes pushed to connected clients");
            }
        }
        if let Ok(mut rate) = self.source_rate.lock() {
            rate.set_rate(self.config().handshake_rate_per_source);
        }
        Ok(changed)
    }
}
