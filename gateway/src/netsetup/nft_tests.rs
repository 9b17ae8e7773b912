//! The table's JSON, checked without nft.
use super::*;

fn owner() -> TableOwner {
    TableOwner {
        pid: Some(4242),
        ip_forward_before: "0".into(),
        conntrack_acct_before: "0".into(),
    }
}

#[test]
fn ruleset_snats_each_network_and_blocks_new_inbound() {
    let targets = [
        NatTarget {
            interface: "eth1".into(),
            eni_address: Ipv4Addr::new(192, 168, 1, 10),
            snat: true,
            alias: None,
        },
        NatTarget {
            interface: "eth2".into(),
            eni_address: Ipv4Addr::new(172, 16, 0, 5),
            snat: false,
            alias: None,
        },
    ];
    let batch = ruleset(
        "cvpn-gw0",
        "10.250.0.0/22".parse().unwrap(),
        &targets,
        &[],
        &[Ipv4Addr::new(192, 168, 1, 53)],
        &owner(),
    );
    let json = serde_json::to_value(&batch).unwrap();
    let rules: Vec<&serde_json::Value> = json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["add"].get("rule"))
        .collect();
    let in_chain = |c: &str| {
        rules
            .iter()
            .filter(|r| r["chain"] == c)
            .map(|r| r["expr"].to_string())
            .collect::<Vec<_>>()
    };
    let nat = in_chain("postrouting");
    assert_eq!(nat.len(), 1, "only the SNAT network: {nat:?}");
    assert!(
        nat[0].contains(r#"{"prefix":{"addr":"10.250.0.0","len":22}}"#),
        "{}",
        nat[0]
    );
    assert!(
        nat[0].contains(r#""right":"eth1""#)
            && nat[0].contains(r#"{"snat":{"addr":"192.168.1.10"}}"#)
    );
    let fwd = in_chain("forward");
    // SYNs both ways through the tunnel are clamped first.
    for (rule, side) in fwd[..2].iter().zip(["iifname", "oifname"]) {
        assert!(
            rule.contains(side)
                && rule.contains(r#""tcp option":{"field":"size","name":"maxseg"}"#)
                && rule.contains(&format!(r#""op":">","right":{CLAMPED_MSS}"#))
                && rule.contains(r#""mangle""#)
                && rule.contains(&CLAMPED_MSS.to_string()),
            "{rule}"
        );
    }
    assert!(fwd[2].contains(r#""right":["established","related"]"#) && fwd[2].contains("accept"));
    assert!(
        fwd[3].contains(r#""right":"cvpn-gw0""#)
            && fwd[3].contains("counter")
            && fwd[3].contains("drop")
    );
    let input = in_chain("input");
    assert_eq!(input.len(), 3);
    assert!(
        input[1].contains("192.168.1.53")
            && input[1].contains(r#"{"set":["tcp","udp"]}"#)
            && input[1].contains("53")
    );
    // The owner record comes back from a listing.
    let listing =
        serde_json::json!({"nftables": [{"rule": {"comment": rules.last().unwrap()["comment"]}}]});
    assert_eq!(owner_in(&listing.to_string()), owner());
}

#[test]
fn sites_leave_as_the_eni_and_only_reachable_from_networks_enter() {
    let targets = [NatTarget {
        interface: "eth1".into(),
        eni_address: Ipv4Addr::new(10, 1, 0, 10),
        snat: true,
        alias: None,
    }];
    let sites = [SiteNetwork {
        cidr: "10.42.0.0/16".parse().unwrap(),
        reachable_from: vec![("eth1".into(), "10.1.0.0/16".parse().unwrap())],
    }];
    let batch = ruleset(
        "cvpn-gw0",
        "10.250.0.0/22".parse().unwrap(),
        &targets,
        &sites,
        &[],
        &owner(),
    );
    let json = serde_json::to_value(&batch).unwrap();
    let rules: Vec<String> = json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["add"].get("rule"))
        .map(|r| format!("{} {}", r["chain"], r["expr"]))
        .collect();
    let snat: Vec<&String> = rules.iter().filter(|r| r.contains("snat")).collect();
    assert_eq!(snat.len(), 2, "{snat:?}");
    assert!(snat[1].contains(r#"{"prefix":{"addr":"10.42.0.0","len":16}}"#));
    let pos = |needle: &str| rules.iter().position(|r| r.contains(needle));
    let enter = pos(r#"{"prefix":{"addr":"10.1.0.0","len":16}}"#).expect("entry rule");
    assert!(rules[enter].starts_with("\"forward\""));
    assert!(rules[enter].contains(r#""right":"eth1""#) && rules[enter].contains("accept"));
    let drop = rules
        .iter()
        .position(|r| r.starts_with("\"forward\"") && r.contains("drop"))
        .unwrap();
    assert!(enter < drop, "the entry comes before the drop");
}

#[test]
fn aliased_networks_get_a_zone_a_mark_and_a_netmap() {
    let alias = Alias::new(
        "100.70.1.0/24".parse().unwrap(),
        "10.0.0.0/24".parse().unwrap(),
        1,
    );
    assert_eq!((alias.zone, alias.mark), (2, 0x6376_0002));
    let targets = [NatTarget {
        interface: "eth2".into(),
        eni_address: Ipv4Addr::new(10, 0, 0, 10),
        snat: true,
        alias: Some(alias),
    }];
    let batch = ruleset(
        "cvpn-gw0",
        "10.250.0.0/22".parse().unwrap(),
        &targets,
        &[],
        &[],
        &owner(),
    );
    let json: serde_json::Value = serde_json::from_str(&to_json(&batch)).unwrap();
    let rules: Vec<String> = json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("add")?.get("rule"))
        .map(|r| format!("{} {}", r["chain"], r["expr"]))
        .collect();
    let find = |chain: &str, needle: &str| {
        rules
            .iter()
            .any(|r| r.starts_with(&format!("\"{chain}\"")) && r.contains(needle))
    };
    let alias = r#"{"prefix":{"addr":"100.70.1.0","len":24}}"#;
    assert!(
        find("zones", alias) && find("zones", r#""ct":{"key":"zone"}"#),
        "{rules:?}"
    );
    assert!(find("zones", r#""right":"eth2""#));
    assert!(find("zones_out", r#""right":"eth2""#));
    assert!(find("marks", alias) && find("marks", &0x6376_0002u32.to_string()));
    assert!(
        find(
            "prerouting",
            r#"{"dnat":{"addr":{"prefix":{"addr":"10.0.0.0","len":24}},"flags":"netmap","type_flags":"prefix"}}"#
        ),
        "{rules:?}"
    );
    // Nothing but rules got the NETMAP keys.
    assert!(!to_json(&batch).contains(r#""expr":null"#));
}

#[test]
fn owner_records() {
    let old = serde_json::json!({"nftables": [{"table": {"name": "cvpn_gw"}}, {"rule": {"comment": "cvpn-gw pid=7 ip_forward=1"}}]});
    assert_eq!(
        owner_in(&old.to_string()),
        TableOwner {
            pid: Some(7),
            ip_forward_before: "1".into(),
            conntrack_acct_before: String::new()
        }
    );
    assert_eq!(owner_in("not json"), TableOwner::default());
}
