//! Validation of a parsed file: every problem found, each with its key.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::*;

#[derive(Default)]
pub(super) struct Validator {
    pub(super) problems: Vec<(String, String)>,
}

impl Validator {
    fn bad(&mut self, key: impl Into<String>, why: impl Into<String>) {
        self.problems.push((key.into(), why.into()));
    }

    /// The network of `net`; a CIDR written with host bits is a problem
    /// under `key` (it is usually a typo for another network).
    fn network(&mut self, key: impl Into<String>, net: Ipv4Net) -> Ipv4Net {
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

    fn targets(&mut self, raw: Vec<RawTarget>, cidr: Ipv4Net) -> Vec<TargetNetwork> {
        let mut ids = HashSet::new();
        let mut out = Vec::new();
        for (i, t) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("target_networks[{i}].{k}");
            if t.id.is_empty() || t.id == "local" {
                self.bad(key("id"), format!("{:?} is not a usable id", t.id));
            } else if !ids.insert(t.id.clone()) {
                self.bad(key("id"), format!("duplicate id {:?}", t.id));
            }
            if !valid_ifname(&t.interface) {
                self.bad(
                    key("interface"),
                    format!("{:?} is not an interface name", t.interface),
                );
            }
            if overlaps(t.vpc_cidr, cidr) {
                self.bad(
                    key("vpc_cidr"),
                    format!("{} overlaps client_cidr {cidr}", t.vpc_cidr),
                );
            }
            let alias_cidr = t
                .alias_cidr
                .map(|a| self.alias(&key("alias_cidr"), a, t.vpc_cidr, cidr));
            out.push(TargetNetwork {
                id: t.id,
                interface: t.interface,
                eni_address: t.eni_address,
                vpc_cidr: t.vpc_cidr.trunc(),
                snat: t.snat,
                alias_cidr,
            });
        }
        self.distinct_views(&out);
        out
    }

    /// An alias: a network of the same length as the real one, clear of
    /// the client CIDR.
    fn alias(&mut self, key: &str, alias: Ipv4Net, real: Ipv4Net, cidr: Ipv4Net) -> Ipv4Net {
        let alias = self.network(key, alias);
        if alias.prefix_len() != real.prefix_len() {
            self.bad(
                key,
                format!(
                    "{alias} must have the length of vpc_cidr {real} (/{}): addresses map 1:1",
                    real.prefix_len()
                ),
            );
        }
        if overlaps(alias, cidr) {
            self.bad(key, format!("{alias} overlaps client_cidr {cidr}"));
        }
        alias
    }

    /// What clients see of the target networks (their aliases, or their
    /// vpc_cidr) may not overlap; real CIDRs may, behind aliases.
    fn distinct_views(&mut self, targets: &[TargetNetwork]) {
        for (i, a) in targets.iter().enumerate() {
            for (j, b) in targets.iter().enumerate().skip(i + 1) {
                let (va, vb) = (a.client_view(), b.client_view());
                let clash = if a.alias_cidr.is_none() && b.alias_cidr.is_none() {
                    // Without aliases, only equal CIDRs are refused: a
                    // more specific network inside another is routed by
                    // longest prefix, as before.
                    va == vb
                } else {
                    overlaps(va, vb)
                };
                if clash {
                    let what = |t: &TargetNetwork| match t.alias_cidr {
                        Some(al) => format!("alias_cidr {al}"),
                        None => format!("vpc_cidr {}", t.vpc_cidr),
                    };
                    let hint = if a.vpc_cidr == b.vpc_cidr
                        && (a.alias_cidr.is_none() || b.alias_cidr.is_none())
                    {
                        " (networks sharing a vpc_cidr each need an alias_cidr)"
                    } else {
                        ""
                    };
                    self.bad(
                        format!("target_networks[{j}]"),
                        format!(
                            "{} ({}) overlaps {} of target_networks[{i}] ({}){hint}",
                            what(b),
                            b.id,
                            what(a),
                            a.id
                        ),
                    );
                }
            }
        }
    }

    fn client_networks(
        &mut self,
        raw: Vec<RawClientNetwork>,
        targets: &[TargetNetwork],
        cidr: Ipv4Net,
    ) -> Vec<ClientNetwork> {
        let mut out: Vec<ClientNetwork> = Vec::new();
        for (i, n) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("client_networks[{i}].{k}");
            if !valid_common_name(&n.common_name) {
                self.bad(
                    key("common_name"),
                    format!(
                        "{:?} is not a certificate common name (1 to 64 printable characters)",
                        n.common_name
                    ),
                );
            }
            let net = self.network(key("cidr"), n.cidr);
            if overlaps(net, cidr) {
                self.bad(key("cidr"), format!("{net} overlaps client_cidr {cidr}"));
            }
            for (j, t) in targets.iter().enumerate() {
                for (what, other) in [("vpc_cidr", Some(t.vpc_cidr)), ("alias_cidr", t.alias_cidr)]
                {
                    if let Some(other) = other.filter(|o| overlaps(net, *o)) {
                        self.bad(
                            key("cidr"),
                            format!(
                                "{net} overlaps target_networks[{j}] ({}) {what} {other}",
                                t.id
                            ),
                        );
                    }
                }
            }
            for (j, other) in out.iter().enumerate() {
                if overlaps(net, other.cidr) {
                    self.bad(
                        key("cidr"),
                        format!(
                            "{net} overlaps client_networks[{j}] ({}) cidr {}",
                            other.common_name, other.cidr
                        ),
                    );
                }
            }
            let mut reachable_from = Vec::new();
            for id in &n.reachable_from {
                match targets.iter().position(|t| &t.id == id) {
                    Some(t) if targets[t].alias_cidr.is_some() => self.bad(
                        key("reachable_from"),
                        format!(
                            "{id:?} has an alias_cidr: an aliased network is reached one way only"
                        ),
                    ),
                    Some(t) if !reachable_from.contains(&t) => reachable_from.push(t),
                    Some(_) => self.bad(key("reachable_from"), format!("{id:?} is named twice")),
                    None => self.bad(
                        key("reachable_from"),
                        format!("no target network with id {id:?}"),
                    ),
                }
            }
            out.push(ClientNetwork {
                common_name: n.common_name,
                cidr: net,
                reachable_from,
            });
        }
        out
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

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// What a certificate's CN can be (RFC 5280's ub-common-name: 64).
fn valid_common_name(name: &str) -> bool {
    (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control)
}

fn valid_ifname(name: &str) -> bool {
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
