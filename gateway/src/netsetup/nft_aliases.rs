//! The table's part for aliased target networks: conntrack zones, the
//! routing marks and the NETMAP of each alias.

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{CT, Expression, Meta, MetaKey, NamedExpression};
use nftables::stmt::{Mangle, NAT, Operator, Statement};
use nftables::types::{NfChainType, NfHook};

use super::{NatTarget, chain, field, is, meta, named, prefix, rule};

/// How an aliased target network is kept apart from others with the same
/// real CIDR: its own conntrack zone (equal tuples in two networks never
/// collide), a mark that selects its routing table, and the 1:1 prefix
/// translation (NETMAP) of its alias to its real CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    /// What clients address.
    pub alias: Ipv4Net,
    /// The network's real CIDR.
    pub real: Ipv4Net,
    /// The conntrack zone of its flows.
    pub zone: u16,
    /// The packet mark that routes by its table (and the table's id).
    pub mark: u32,
}

/// Marks and routing-table ids of aliased networks: this base plus the
/// network's position (from 1), within [`ALIAS_MARK_MASK`].
pub const ALIAS_MARK_BASE: u32 = 0x6376_0000;
/// The bits of a mark that say it is one of ours.
pub const ALIAS_MARK_MASK: u32 = 0xffff_0000;

impl Alias {
    /// The alias of the target network at `index` (0-based).
    pub fn new(alias: Ipv4Net, real: Ipv4Net, index: usize) -> Alias {
        let n = index as u32 + 1;
        Alias {
            alias,
            real,
            zone: n as u16,
            mark: ALIAS_MARK_BASE + n,
        }
    }
}

/// The chains of aliased networks (none without aliases): conntrack zone
/// by network before conntrack sees a packet (raw priority, both ways and
/// for the host's own packets), the routing mark before the DNAT (mangle
/// priority, while the destination is still the alias), and the NETMAP.
pub(super) fn aliases(b: &mut Batch<'static>, tun: &str, targets: &[NatTarget]) {
    let aliased: Vec<(&NatTarget, &Alias)> = targets
        .iter()
        .filter_map(|t| Some((t, t.alias.as_ref()?)))
        .collect();
    if aliased.is_empty() {
        return;
    }
    // nft's priorities raw (-300), mangle (-150), dstnat (-100).
    b.add(chain(
        "zones",
        NfChainType::Filter,
        NfHook::Prerouting,
        -300,
    ));
    b.add(chain(
        "zones_out",
        NfChainType::Filter,
        NfHook::Output,
        -300,
    ));
    b.add(chain(
        "marks",
        NfChainType::Filter,
        NfHook::Prerouting,
        -150,
    ));
    b.add(chain(
        "prerouting",
        NfChainType::NAT,
        NfHook::Prerouting,
        -100,
    ));
    let set = |key: NamedExpression<'static>, value: u32| {
        Statement::Mangle(Mangle {
            key: named(key),
            value: Expression::Number(value),
        })
    };
    let zone = || {
        NamedExpression::CT(CT {
            key: "zone".into(),
            family: None,
            dir: None,
        })
    };
    for (t, a) in aliased {
        let to_alias = || {
            vec![
                meta(MetaKey::Iifname, tun),
                is(field("ip", "daddr"), Operator::EQ, prefix(a.alias)),
            ]
        };
        let mut r = to_alias();
        r.push(set(zone(), a.zone.into()));
        b.add(rule("zones", r, None));
        b.add(rule(
            "zones",
            vec![
                meta(MetaKey::Iifname, &t.interface),
                set(zone(), a.zone.into()),
            ],
            None,
        ));
        b.add(rule(
            "zones_out",
            vec![
                meta(MetaKey::Oifname, &t.interface),
                set(zone(), a.zone.into()),
            ],
            None,
        ));
        let mut r = to_alias();
        r.push(set(
            NamedExpression::Meta(Meta { key: MetaKey::Mark }),
            a.mark,
        ));
        b.add(rule("marks", r, None));
        let mut r = to_alias();
        r.push(Statement::DNAT(Some(NAT {
            addr: Some(prefix(a.real)),
            family: None,
            port: None,
            flags: None,
        })));
        b.add(rule("prerouting", r, None));
    }
}
