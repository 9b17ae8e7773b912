use std::net::Ipv4Addr;

use super::*;
use crate::config::{Origin, Route, RouteTarget, Rule};

fn rule(dest: &str, group: Option<&str>) -> Rule {
    Rule {
        destination: dest.parse().unwrap(),
        access_group: group.map(str::to_string),
        description: None,
    }
}

fn allows(rules: &[Rule], groups: &[&str], dst: &str) -> bool {
    let r = AuthRules::compile(rules).unwrap();
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    r.allows(dst.parse().unwrap(), r.mask_of(&groups))
}

/// The managed service's documented scenario: dev -> 10.0.0.0/16,
/// mgr -> 0.0.0.0/0, mgr -> 10.0.2.119/32.
#[test]
fn more_specific_rule_hides_shorter_one() {
    let rules = [
        rule("10.0.0.0/16", Some("dev")),
        rule("0.0.0.0/0", Some("mgr")),
        rule("10.0.2.119/32", Some("mgr")),
    ];
    assert!(allows(&rules, &["dev"], "10.0.0.5"));
    assert!(!allows(&rules, &["dev"], "10.0.2.119"));
    assert!(!allows(&rules, &["dev"], "8.8.8.8"));
    assert!(allows(&rules, &["mgr"], "10.0.2.119"));
    assert!(allows(&rules, &["mgr"], "172.16.0.1"));
    assert!(!allows(&rules, &["mgr"], "10.0.0.5"));
    assert!(allows(&rules, &["dev", "mgr"], "10.0.0.5"));
}

#[test]
fn equal_prefixes_are_a_union() {
    let rules = [
        rule("0.0.0.0/0", Some("eng")),
        rule("0.0.0.0/0", Some("mgr")),
    ];
    assert!(allows(&rules, &["eng"], "192.168.0.7"));
    assert!(allows(&rules, &["mgr"], "192.168.0.7"));
    assert!(!allows(&rules, &["sales"], "192.168.0.7"));

    let rules = [
        rule("0.0.0.0/0", Some("eng")),
        rule("0.0.0.0/0", Some("mgr")),
        rule("192.168.0.0/24", Some("mgr")),
    ];
    assert!(allows(&rules, &["mgr"], "192.168.0.7"));
    assert!(!allows(&rules, &["eng"], "192.168.0.7"));
    assert!(allows(&rules, &["eng"], "192.168.1.7"));
}

#[test]
fn all_users_and_group_rules() {
    let rules = [rule("0.0.0.0/0", None), rule("172.16.0.0/16", Some("eng"))];
    assert!(allows(&rules, &[], "8.8.8.8"));
    assert!(allows(&rules, &["sales"], "8.8.8.8"));
    assert!(allows(&rules, &["eng"], "172.16.3.4"));
    assert!(!allows(&rules, &["sales"], "172.16.3.4"));
    assert!(!allows(&rules, &[], "172.16.3.4"));
}

#[test]
fn default_is_deny() {
    assert!(!allows(&[], &["eng"], "10.0.0.1"));
    assert!(!allows(
        &[rule("10.0.0.0/8", Some("eng"))],
        &["eng"],
        "11.0.0.1"
    ));
}

fn packet(src: [u8; 4], dst: [u8; 4]) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

fn policy() -> Policy {
    let route = |d: &str, t| Route {
        destination: d.parse().unwrap(),
        target: t,
        origin: Origin::AddRoute,
        description: None,
    };
    let routes = RouteTable::compile(&[
        route("192.168.0.0/16", RouteTarget::Network(0)),
        route("10.20.0.0/16", RouteTarget::Network(1)),
        route("10.250.0.0/22", RouteTarget::Local),
        route("10.42.0.0/16", RouteTarget::ClientNetwork(0)),
    ]);
    let rules = AuthRules::compile(&[
        rule("192.168.1.0/24", Some("eng")),
        rule("10.42.0.0/16", Some("eng")),
        rule("10.20.0.0/16", None),
        rule("10.250.0.0/22", None),
    ])
    .unwrap();
    Policy {
        client_cidr: "10.250.0.0/22".parse().unwrap(),
        routes,
        rules,
        client_networks: {
            let mut lpm = Lpm::default();
            lpm.entry_or_insert_with("10.42.0.0/16".parse().unwrap(), || (0, "site-b".into()));
            lpm
        },
        carriers: vec!["site-b".into()],
        generation: 0,
    }
}

/// A site's session may send from the network it carries; no one else.
#[test]
fn client_networks_are_destinations_and_their_carriers_sources() {
    let p = policy();
    let laptop = Ipv4Addr::new(10, 250, 0, 2);
    let site = Ipv4Addr::new(10, 250, 0, 9);
    let eng = p.group_mask(&["eng".into()]);
    let none = p.group_mask(&[]);
    let host_b = [10, 42, 0, 5];
    assert_eq!(
        p.check(&packet([10, 250, 0, 2], host_b), laptop, "laptop", eng),
        Verdict::Forward(RouteTarget::ClientNetwork(0))
    );
    assert_eq!(
        p.check(&packet([10, 250, 0, 2], host_b), laptop, "laptop", none),
        Verdict::Denied
    );
    // From behind the site, to a target network its groups reach.
    assert_eq!(
        p.check(&packet(host_b, [192, 168, 1, 5]), site, "site-b", eng),
        Verdict::Forward(RouteTarget::Network(0))
    );
    assert_eq!(
        p.check(&packet(host_b, [10, 20, 0, 1]), site, "site-b", none),
        Verdict::Forward(RouteTarget::Network(1))
    );
    // The site's own address still works; another identity may not send
    // from the site's network.
    assert_eq!(
        p.check(
            &packet([10, 250, 0, 9], [10, 20, 0, 1]),
            site,
            "site-b",
            none
        ),
        Verdict::Forward(RouteTarget::Network(1))
    );
    assert_eq!(
        p.check(&packet(host_b, [10, 20, 0, 1]), laptop, "laptop", eng),
        Verdict::Spoofed
    );
    assert_eq!(
        p.check(&packet([10, 43, 0, 1], [10, 20, 0, 1]), site, "site-b", eng),
        Verdict::Spoofed
    );
    assert_eq!(p.reply_target(laptop), Some(RouteTarget::Local));
}

#[test]
fn packet_verdicts() {
    let p = policy();
    let me = Ipv4Addr::new(10, 250, 0, 2);
    let eng = p.group_mask(&["eng".into()]);
    let none = p.group_mask(&[]);
    let c = [10, 250, 0, 2];
    assert_eq!(
        p.check(&packet(c, [192, 168, 1, 5]), me, "laptop", eng),
        Verdict::Forward(RouteTarget::Network(0))
    );
    assert_eq!(
        p.check(&packet(c, [192, 168, 1, 5]), me, "laptop", none),
        Verdict::Denied
    );
    assert_eq!(
        p.check(&packet(c, [192, 168, 2, 5]), me, "laptop", eng),
        Verdict::Denied
    );
    assert_eq!(
        p.check(&packet(c, [10, 20, 3, 4]), me, "laptop", none),
        Verdict::Forward(RouteTarget::Network(1))
    );
    assert_eq!(
        p.check(&packet(c, [10, 250, 0, 3]), me, "laptop", none),
        Verdict::Forward(RouteTarget::Local)
    );
    assert_eq!(
        p.check(&packet(c, [8, 8, 8, 8]), me, "laptop", eng),
        Verdict::NoRoute
    );
    assert_eq!(
        p.check(
            &packet([10, 250, 0, 9], [192, 168, 1, 5]),
            me,
            "laptop",
            eng
        ),
        Verdict::Spoofed
    );
    assert_eq!(
        p.check(&packet(c, [192, 168, 1, 5])[..19], me, "laptop", eng),
        Verdict::Malformed
    );
    let mut v6 = packet(c, [192, 168, 1, 5]);
    v6[0] = 0x60;
    assert_eq!(p.check(&v6, me, "laptop", eng), Verdict::Malformed);
    // An IPv6 header's worth: a stock client's IPv6 chatter, not garbage.
    let mut v6 = [0u8; 40];
    v6[0] = 0x60;
    assert_eq!(p.check(&v6, me, "laptop", eng), Verdict::Ipv6);
}

/// IPv4 headers the kernel would refuse are the policy's to drop.
#[test]
fn lengths_the_kernel_would_refuse_are_malformed() {
    let p = policy();
    let me = Ipv4Addr::new(10, 250, 0, 2);
    let eng = p.group_mask(&["eng".into()]);
    let good = packet([10, 250, 0, 2], [192, 168, 1, 5]);
    type Spoil = fn(&mut [u8; 28]);
    let cases: [(&str, Spoil); 5] = [
        ("IHL beyond the packet", |b| b[0] = 0x4f),
        ("IHL below 5", |b| b[0] = 0x44),
        ("total length beyond", |b| {
            b[2..4].copy_from_slice(&29u16.to_be_bytes())
        }),
        ("total length below", |b| {
            b[2..4].copy_from_slice(&20u16.to_be_bytes())
        }),
        ("total length zero", |b| {
            b[2..4].copy_from_slice(&0u16.to_be_bytes())
        }),
    ];
    for (what, spoil) in cases {
        let mut bad = good;
        spoil(&mut bad);
        assert_eq!(
            p.check(&bad, me, "laptop", eng),
            Verdict::Malformed,
            "{what}"
        );
    }
    // A frame longer than the packet it holds.
    let mut padded = good.to_vec();
    padded.push(0);
    assert_eq!(p.check(&padded, me, "laptop", eng), Verdict::Malformed);
}
