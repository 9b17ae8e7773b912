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
    check("metrics_listen", old.metrics_listen == new.metrics_listen);
    // The nftables table is built from the interfaces and ENI addresses.
    let host = |c: &Config| {
        c.target_networks
            .iter()
            .map(|t| (t.id.clone(), t.interface.clone(), t.eni_address, t.snat))
            .collect::<Vec<_>>()
    };
    check("target_networks", host(old) == host(new));
    keys
}

/// What clients are told of routing: full tunnel, the routes of a split
/// tunnel, DNS servers.
fn pushed(c: &Config) -> (bool, Vec<ipnet::Ipv4Net>, Vec<std::net::Ipv4Addr>) {
    let routes = if c.split_tunnel {
        c.routes.iter().map(|r| r.destination).collect()
    } else {
        Vec::new()
    };
    (!c.split_tunnel, routes, c.dns_servers.clone())
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
        drop(old);
        // The policy goes in with the configuration it was compiled
        // from; each session's group mask follows the policy's generation.
        self.config.store(Arc::new(new));
        self.policy.store(Arc::new(policy));
        if before != after {
            let generation = self.routes_generation.fetch_add(1, Ordering::Relaxed) + 1;
            // Only the route list of a split tunnel can change live.
            if before.0 == after.0 && before.2 == after.2 && !after.0 {
                let taken = self
                    .sessions
                    .all()
                    .iter()
                    .filter(|s| s.update_routes(&after.1, generation))
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
