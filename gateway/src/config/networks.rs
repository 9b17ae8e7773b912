//! Validation of the networks: target networks (and their aliases) and
//! the networks behind clients, which may overlap nothing clients see.

use std::collections::HashSet;

use ipnet::Ipv4Net;

use super::validate::{Validator, overlaps, valid_common_name, valid_ifname};
use super::*;

impl Validator {
    pub(super) fn targets(&mut self, raw: Vec<RawTarget>, cidr: Ipv4Net) -> Vec<TargetNetwork> {
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

    pub(super) fn client_networks(
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
}
