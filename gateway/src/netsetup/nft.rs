//! The gateway's own nftables table. It SNATs client traffic leaving each
//! target network's interface to that network's ENI address, lets only
//! replies (conntrack established/related) back toward the tunnel, and
//! drops tunnel traffic to the gateway host itself (the managed service's
//! ENI is not a host), but for DNS to a pushed server the host runs. The
//! table goes to `nft -j -f -` as one JSON batch (the nftables crate): one
//! transaction. The comment of its last rule records the sysctls the
//! gateway changed, with their values before, so a run after a crash can
//! restore them, and the pid of the gateway that owns it, so a start never
//! removes a live one's.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem,
    TcpOption,
};
use nftables::helper::{self, DEFAULT_NFT, NftablesError};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Counter, Mangle, Match, NAT, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The table's name (family ip).
pub const TABLE: &str = "cvpn_gw";
const PID_PREFIX: &str = "cvpn-gw pid=";
const FORWARD_PREFIX: &str = "ip_forward=";
const ACCT_PREFIX: &str = "nf_conntrack_acct=";

/// One target network as the NAT needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatTarget {
    /// The interface toward the target network.
    pub interface: String,
    /// The address clients' traffic is SNATed to.
    pub eni_address: Ipv4Addr,
    /// False: the target network sees client addresses.
    pub snat: bool,
    /// Clients reach the network under an alias.
    pub alias: Option<Alias>,
}

/// A client network as the table needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteNetwork {
    /// The network behind the client.
    pub cidr: Ipv4Net,
    /// The target networks whose hosts may open connections into it:
    /// (interface, vpc_cidr).
    pub reachable_from: Vec<(String, Ipv4Net)>,
}

/// Why nft did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nft could not be run, or its output not read.
    #[error("cannot run nft (is the nftables package installed?): {0}")]
    Spawn(String),
    /// nft ran and refused the batch.
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

impl From<NftablesError> for NftError {
    fn from(e: NftablesError) -> NftError {
        match e {
            NftablesError::NftFailed { stderr, .. } => NftError::Refused(stderr.trim().to_string()),
            other => NftError::Spawn(other.to_string()),
        }
    }
}

/// What the table's owner record says (see [`TableOwner`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableOwner {
    /// The gateway that created the table (absent in tables of old runs).
    pub pid: Option<u32>,
    /// net.ipv4.ip_forward before that gateway set it; empty if unknown.
    pub ip_forward_before: String,
    /// net.netfilter.nf_conntrack_acct before that gateway set it (for its
    /// flow log); empty if it did not.
    pub conntrack_acct_before: String,
}

impl TableOwner {
    fn comment(&self) -> String {
        let mut c = format!(
            "{PID_PREFIX}{} {FORWARD_PREFIX}{}",
            self.pid.unwrap_or_default(),
            self.ip_forward_before.trim()
        );
        if !self.conntrack_acct_before.is_empty() {
            c.push_str(&format!(
                " {ACCT_PREFIX}{}",
                self.conntrack_acct_before.trim()
            ));
        }
        c
    }

    fn parse(comment: &str) -> TableOwner {
        TableOwner {
            pid: digits_after(comment, PID_PREFIX).and_then(|p| p.parse().ok()),
            ip_forward_before: digits_after(comment, FORWARD_PREFIX).unwrap_or_default(),
            conntrack_acct_before: digits_after(comment, ACCT_PREFIX).unwrap_or_default(),
        }
    }
}

fn digits_after(text: &str, prefix: &str) -> Option<String> {
    let start = text.find(prefix)? + prefix.len();
    let value: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!value.is_empty()).then_some(value)
}

fn named(e: NamedExpression<'static>) -> Expression<'static> {
    Expression::Named(e)
}

fn text(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_string()))
}

fn is(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn meta(key: MetaKey, value: &str) -> Statement<'static> {
    is(
        named(NamedExpression::Meta(Meta { key })),
        Operator::EQ,
        text(value),
    )
}

fn field(protocol: &str, name: &str) -> Expression<'static> {
    named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Owned(protocol.to_string()),
            field: Cow::Owned(name.to_string()),
        },
    )))
}

fn replies_only() -> Statement<'static> {
    let state = named(NamedExpression::CT(CT {
        key: "state".into(),
        family: None,
        dir: None,
    }));
    is(
        state,
        Operator::IN,
        Expression::List(vec![text("established"), text("related")]),
    )
}

/// The largest TCP segment a forwarded SYN may announce: what fits
/// OpenVPN's default mssfix of 1450 bytes per encapsulated packet, less the
/// data channel's header, packet id and tag (24), a compression framing
/// byte and the IPv4 and TCP headers (40).
pub const CLAMPED_MSS: u16 = 1450 - 24 - 1 - 40;

/// `MATCH tcp flags syn tcp option maxseg size > CLAMPED_MSS tcp option
/// maxseg size set CLAMPED_MSS`.
fn clamp_mss(side: Statement<'static>) -> Vec<Statement<'static>> {
    let mss = || {
        named(NamedExpression::TcpOption(TcpOption {
            name: "maxseg".into(),
            field: Some("size".into()),
        }))
    };
    vec![
        side,
        is(field("tcp", "flags"), Operator::IN, text("syn")),
        // `>`: nftables 0.6 has the names of `<` and `>` swapped (its LT
        // serializes as ">"); the unit test holds the JSON to `>`.
        is(
            mss(),
            Operator::LT,
            Expression::Number(u32::from(CLAMPED_MSS)),
        ),
        Statement::Mangle(Mangle {
            key: mss(),
            value: Expression::Number(u32::from(CLAMPED_MSS)),
        }),
    ]
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    named(NamedExpression::Prefix(Prefix {
        addr: Box::new(text(&net.network().to_string())),
        len: net.prefix_len().into(),
    }))
}

fn counted_drop() -> [Statement<'static>; 2] {
    [
        Statement::Counter(Counter::Anonymous(None)),
        Statement::Drop(None),
    ]
}

fn chain(name: &str, kind: NfChainType, hook: NfHook, prio: i32) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: Cow::Owned(name.to_string()),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn rule(
    chain: &str,
    expr: Vec<Statement<'static>>,
    comment: Option<String>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: TABLE.into(),
        chain: Cow::Owned(chain.to_string()),
        expr: expr.into(),
        comment: comment.map(Cow::Owned),
        ..Rule::default()
    })
}

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        handle: None,
    })
}

/// The whole table, owned by `owner`, as one batch that replaces any
/// previous table of ours.
pub fn ruleset(
    tun: &str,
    client_cidr: Ipv4Net,
    targets: &[NatTarget],
    sites: &[SiteNetwork],
    dns_servers: &[Ipv4Addr],
    owner: &TableOwner,
) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(table());
    b.delete(table());
    b.add(table());
    // The priorities of nft's names srcnat (100) and filter (0).
    b.add(chain(
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    ));
    // Clients and the networks behind them leave as the ENI address.
    let sources = std::iter::once(client_cidr).chain(sites.iter().map(|s| s.cidr));
    for (source, t) in sources.flat_map(|c| targets.iter().filter(|t| t.snat).map(move |t| (c, t)))
    {
        let snat = NAT {
            addr: Some(text(&t.eni_address.to_string())),
            family: None,
            port: None,
            flags: None,
        };
        b.add(rule(
            "postrouting",
            vec![
                is(field("ip", "saddr"), Operator::EQ, prefix(source)),
                meta(MetaKey::Oifname, &t.interface),
                Statement::SNAT(Some(snat)),
            ],
            None,
        ));
    }
    aliases(&mut b, tun, targets);
    b.add(chain("forward", NfChainType::Filter, NfHook::Forward, 0));
    // Both ways through the tunnel, so neither end sends a segment that
    // does not fit the tunnel once encapsulated (OpenVPN's mssfix, for
    // clients that turned theirs off).
    for key in [MetaKey::Iifname, MetaKey::Oifname] {
        b.add(rule("forward", clamp_mss(meta(key, tun)), None));
    }
    let to_tun = || meta(MetaKey::Oifname, tun);
    b.add(rule(
        "forward",
        vec![to_tun(), replies_only(), Statement::Accept(None)],
        None,
    ));
    // Hosts of a `reachable_from` network open connections into a site,
    // routed: nothing else enters from a target network.
    for site in sites {
        for (interface, vpc) in &site.reachable_from {
            b.add(rule(
                "forward",
                vec![
                    meta(MetaKey::Iifname, interface),
                    to_tun(),
                    is(field("ip", "saddr"), Operator::EQ, prefix(*vpc)),
                    is(field("ip", "daddr"), Operator::EQ, prefix(site.cidr)),
                    Statement::Accept(None),
                ],
                None,
            ));
        }
    }
    let [count, drop] = counted_drop();
    b.add(rule("forward", vec![to_tun(), count, drop], None));
    b.add(chain("input", NfChainType::Filter, NfHook::Input, 0));
    let from_tun = || meta(MetaKey::Iifname, tun);
    b.add(rule(
        "input",
        vec![from_tun(), replies_only(), Statement::Accept(None)],
        None,
    ));
    for dns in dns_servers {
        let l4 = named(NamedExpression::Set(vec![
            SetItem::Element(text("tcp")),
            SetItem::Element(text("udp")),
        ]));
        b.add(rule(
            "input",
            vec![
                from_tun(),
                is(field("ip", "daddr"), Operator::EQ, text(&dns.to_string())),
                is(
                    named(NamedExpression::Meta(Meta {
                        key: MetaKey::L4proto,
                    })),
                    Operator::EQ,
                    l4,
                ),
                is(field("th", "dport"), Operator::EQ, Expression::Number(53)),
                Statement::Accept(None),
            ],
            None,
        ));
    }
    let [count, drop] = counted_drop();
    b.add(rule(
        "input",
        vec![from_tun(), count, drop],
        Some(owner.comment()),
    ));
    b.to_nftables()
}

/// The batch as nft's JSON, every DNAT of a prefix made a NETMAP (the
/// nftables crate has no words for it: nft writes `dnat ip prefix to P`
/// as `"flags": "netmap", "type_flags": "prefix"`). Our table has no
/// other DNAT.
fn to_json(ruleset: &Nftables) -> String {
    let mut value = serde_json::to_value(ruleset).unwrap_or_default();
    if let Some(objects) = value.get_mut("nftables").and_then(|v| v.as_array_mut()) {
        for o in objects {
            let Some(exprs) = o
                .pointer_mut("/add/rule/expr")
                .and_then(|e| e.as_array_mut())
            else {
                continue;
            };
            for e in exprs {
                if let Some(dnat) = e.get_mut("dnat").and_then(|d| d.as_object_mut())
                    && dnat.get("addr").is_some_and(|a| a.get("prefix").is_some())
                {
                    dnat.insert("flags".into(), "netmap".into());
                    dnat.insert("type_flags".into(), "prefix".into());
                }
            }
        }
    }
    value.to_string()
}

/// Creates the table, replacing any previous one of ours, atomically.
pub fn install(ruleset: &Nftables) -> Result<(), NftError> {
    helper::apply_ruleset_raw(&to_json(ruleset), DEFAULT_NFT, helper::DEFAULT_ARGS)?;
    Ok(())
}

/// Deletes our table (nothing if there is none).
pub fn remove() -> Result<(), NftError> {
    let mut b = Batch::new();
    b.add(table());
    b.delete(table());
    Ok(helper::apply_ruleset(&b.to_nftables())?)
}

/// If a table of ours exists in this network namespace, what its owner
/// record says.
pub fn existing_table() -> Option<TableOwner> {
    let listing =
        helper::get_current_ruleset_raw(DEFAULT_NFT, ["list", "table", "ip", TABLE]).ok()?;
    Some(owner_in(&listing))
}

/// The owner record in a JSON listing of the table (the default if none).
fn owner_in(listing: &str) -> TableOwner {
    let value: serde_json::Value = serde_json::from_str(listing).unwrap_or_default();
    let objects = value["nftables"].as_array().cloned().unwrap_or_default();
    objects
        .iter()
        .filter_map(|o| o["rule"]["comment"].as_str())
        .find(|c| c.starts_with(PID_PREFIX))
        .map(TableOwner::parse)
        .unwrap_or_default()
}

#[path = "nft_aliases.rs"]
mod aliases;
use aliases::aliases;
pub use aliases::{ALIAS_MARK_BASE, ALIAS_MARK_MASK, Alias};

#[cfg(test)]
#[path = "nft_tests.rs"]
mod tests;
