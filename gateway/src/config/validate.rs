//! Validation of a parsed file: every problem found, each with its key.

use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::*;

#[derive(Default)]
pub(super) struct Validator {
    pub(super) problems: Vec<(String, String)>,
}

impl Validator {
    pub(super) fn bad(&mut self, key: impl Into<String>, why: impl Into<String>) {
        self.problems.push((key.into(), why.into()));
    }

    /// The network of `net`; a CIDR written with host bits is a problem
    /// under `key` (it is usually a typo for another network).
    pub(super) fn network(&mut self, key: impl Into<String>, net: Ipv4Net) -> Ipv4Net {
        let trunc = net.trunc();
        if net != trunc {
            self.bad(
                key,
                format!("{net} has host bits set (did you mean {trunc}?)"),
            );
        }
        trunc
    }

    pub(super) fn config(&mut self, raw: RawConfig, base: &Path) -> Config {
        let cidr = raw.client_cidr;
        self.network("client_cidr", cidr);
        if !(MIN_CLIENT_PREFIX..=MAX_CLIENT_PREFIX).contains(&cidr.prefix_len()) {
            self.bad(
                "client_cidr",
                format!("{cidr}: the prefix must be between /12 and /22"),
            );
        }
        if raw.dns_servers.len() > MAX_DNS_SERVERS {
            self.bad(
                "dns_servers",
                format!(
                    "{} servers given; at most {MAX_DNS_SERVERS}",
                    raw.dns_servers.len()
                ),
            );
        }
        if let Some(b) = &raw.banner {
            let n = b.chars().count();
            if n > MAX_BANNER_CHARS {
                self.bad(
                    "banner",
                    format!("{n} characters; at most {MAX_BANNER_CHARS}"),
                );
            }
        }
        let session_timeout = match raw.session_timeout.as_deref().map(parse_duration) {
            None => MAX_SESSION_TIMEOUT,
            Some(Ok(d)) if !d.is_zero() && d <= MAX_SESSION_TIMEOUT => d,
            Some(Ok(_)) => {
                self.bad("session_timeout", "must be more than 0s and at most 24h");
                MAX_SESSION_TIMEOUT
            }
            Some(Err(why)) => {
                self.bad("session_timeout", why);
                MAX_SESSION_TIMEOUT
            }
        };
        let transport_protocol = match raw.transport_protocol.as_deref() {
            None | Some("tcp") => TransportProtocol::Tcp,
            Some("udp") => TransportProtocol::Udp,
            Some(other) => {
                self.bad(
                    "transport_protocol",
                    format!("{other:?}: expected \"tcp\" or \"udp\""),
                );
                TransportProtocol::Tcp
            }
        };
        let data_threads = match raw.data_threads {
            None => 0,
            Some(n @ 0..=MAX_DATA_THREADS) => n as usize,
            Some(n) => {
                self.bad(
                    "data_threads",
                    format!("{n}: must be between 0 (one per core) and {MAX_DATA_THREADS}"),
                );
                0
            }
        };
        let max_sessions_per_identity = self.count(
            "max_sessions_per_identity",
            raw.max_sessions_per_identity,
            DEFAULT_MAX_SESSIONS_PER_IDENTITY,
        );
        let max_connections = self.count(
            "max_connections",
            raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
        );
        let handshake_rate_per_source = self.count(
            "handshake_rate_per_source",
            raw.handshake_rate_per_source,
            DEFAULT_HANDSHAKE_RATE_PER_SOURCE,
        );
        let min_version = match raw.tls.min_version.as_deref() {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.3") => TlsVersion::Tls13,
            Some(other) => {
                self.bad(
                    "tls.min_version",
                    format!("{other:?}: expected \"1.2\" or \"1.3\""),
                );
                TlsVersion::Tls12
            }
        };
        let reneg = match raw.tls.reneg_seconds {
            None => DEFAULT_RENEG,
            Some(n @ 0..=MAX_RENEG_SECONDS) => Duration::from_secs(n as u64),
            Some(n) => {
                self.bad(
                    "tls.reneg_seconds",
                    format!(
                        "{n}: must be between 0 (only when a key wears out) and {MAX_RENEG_SECONDS}"
                    ),
                );
                DEFAULT_RENEG
            }
        };
        let targets = self.targets(raw.target_networks, cidr);
        let client_networks = self.client_networks(raw.client_networks, &targets, cidr);
        let routes = self.routes(raw.routes, &targets, &client_networks, cidr);
        let rules = self.rules(raw.authorization_rules);
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let cluster = raw.cluster.map(|c| {
            self.cluster_return_traffic(&targets, &client_networks);
            self.cluster(c, &resolve)
        });
        Config {
            listen: raw.listen,
            client_cidr: cidr.trunc(),
            split_tunnel: raw.split_tunnel,
            dns_servers: raw.dns_servers,
            session_timeout,
            banner: raw.banner,
            control_socket: raw
                .control_socket
                .map(resolve)
                .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            connection_log: raw.connection_log.map(resolve),
            flow_log: raw.flow_log.map(resolve),
            flow_log_rate: self.count(
                "flow_log_rate",
                raw.flow_log_rate,
                crate::endpoint::flowbudget::DEFAULT_RATE,
            ),
            metrics_listen: raw.metrics_listen,
            transport_protocol,
            data_threads,
            state_dir: raw
                .state_dir
                .map(resolve)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            max_sessions_per_identity,
            max_connections,
            handshake_rate_per_source,
            tls: TlsFiles {
                cert: resolve(raw.tls.cert),
                key: resolve(raw.tls.key),
                client_ca: resolve(raw.tls.client_ca),
                crl: raw.tls.crl.map(resolve),
                tls_crypt: raw.tls.tls_crypt.map(resolve),
                min_version,
                reneg,
            },
            target_networks: targets,
            client_networks,
            cluster,
            policy_keys: Default::default(),
            routes,
            rules,
        }
    }

    /// A limit of at least 1 (at most 1,000,000); `default` when absent.
    fn count(&mut self, key: &str, value: Option<i64>, default: u32) -> u32 {
        match value {
            None => default,
            Some(n) if (1..=1_000_000).contains(&n) => n as u32,
            Some(n) => {
                self.bad(key, format!("{n}: must be between 1 and 1000000"));
                default
            }
        }
    }

    fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        targets: &[TargetNetwork],
        client_networks: &[ClientNetwork],
        cidr: Ipv4Net,
    ) -> Vec<Route> {
        let mut routes: Vec<Route> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| Route {
                destination: t.client_view(),
                target: RouteTarget::Network(i),
                origin: Origin::Associate,
                description: Some(match t.alias_cidr {
                    Some(_) => format!("association of {} (alias of {})", t.id, t.vpc_cidr),
                    None => format!("association of {}", t.id),
                }),
            })
            .collect();
        routes.extend(client_networks.iter().enumerate().map(|(i, n)| Route {
            destination: n.cidr,
            target: RouteTarget::ClientNetwork(i),
            origin: Origin::ClientNetwork,
            description: Some(format!("behind client {}", n.common_name)),
        }));
        for (i, r) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            let dest = self.network(key("destination"), r.destination);
            let target = if r.target == "local" {
                if dest != cidr {
                    self.bad(
                        key("destination"),
                        format!("a local route's destination must be client_cidr {cidr}"),
                    );
                }
                RouteTarget::Local
            } else {
                match targets.iter().position(|t| t.id == r.target) {
                    Some(n) => {
                        if let Some(alias) = targets[n].alias_cidr
                            && !(alias.contains(&dest.network())
                                && dest.prefix_len() >= alias.prefix_len())
                        {
                            self.bad(
                                key("destination"),
                                format!(
                                    "{dest} is outside alias_cidr {alias} of {:?}: a network with an alias is reached only under it",
                                    r.target
                                ),
                            );
                        }
                        RouteTarget::Network(n)
                    }
                    None => {
                        self.bad(
                            key("target"),
                            format!("no target network with id {:?}", r.target),
                        );
                        continue;
                    }
                }
            };
            if target != RouteTarget::Local && overlaps(dest, cidr) {
                self.bad(
                    key("destination"),
                    format!("{dest} overlaps client_cidr {cidr}"),
                );
            }
            if let Some(prev) = routes.iter().find(|p| p.destination == dest) {
                let what = match prev.origin {
                    Origin::Associate => "a target network's vpc_cidr",
                    Origin::ClientNetwork => "a client network",
                    Origin::AddRoute => "another route",
                };
                self.bad(
                    key("destination"),
                    format!("{dest} is already the destination of {what}"),
                );
                continue;
            }
            routes.push(Route {
                destination: dest,
                target,
                origin: Origin::AddRoute,
                description: r.description,
            });
        }
        routes
    }

    fn rules(&mut self, raw: Vec<RawRule>) -> Vec<Rule> {
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("authorization_rules[{i}].{k}");
            let dest = self.network(key("destination"), r.destination);
            let access_group = match (r.access_group, r.all_users) {
                (Some(_), Some(true)) => {
                    self.bad(
                        key("all_users"),
                        "give either access_group or all_users = true, not both",
                    );
                    continue;
                }
                (Some(g), _) if g.trim().is_empty() => {
                    self.bad(key("access_group"), "empty group name");
                    continue;
                }
                (None, Some(false)) => {
                    self.bad(key("all_users"), "all_users = false needs an access_group");
                    continue;
                }
                (g, _) => g,
            };
            out.push(Rule {
                destination: dest,
                access_group,
                description: r.description,
            });
        }
        out
    }
}

pub(super) fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// What a certificate's CN can be (RFC 5280's ub-common-name: 64).
pub(super) fn valid_common_name(name: &str) -> bool {
    (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control)
}

pub(super) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// "24h", "90m", "45s", "1h30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like \"24h\", \"90m\" or \"1h30m\"");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || s.trim().is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}
