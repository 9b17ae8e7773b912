//! The tunnel end to end, in namespaces: reachability through SNAT, pushed
//! routes, cleanup of everything the client installed.

use cvpn_e2e::checks::transfers_both_ways_from_eni;
use cvpn_e2e::netns::{sh, sh_ok};
use cvpn_e2e::testbed::{PEERED, TARGET, Testbed};

const ALL_USERS: &str = r#"
[[authorization_rules]]
destination = "0.0.0.0/0"
"#;

fn routes_of(ns: &str) -> Vec<String> {
    sh_ok(ns, "ip -4 route show")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn ours(routes: &[String]) -> Vec<String> {
    let mut r: Vec<String> = routes
        .iter()
        .filter(|l| l.contains("proto 179"))
        .cloned()
        .collect();
    r.sort();
    r
}

#[test]
fn split_tunnel_reaches_target_and_peered_network() {
    let tb = Testbed::new("split", 1);
    let config = tb.write_config("", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &["eng"], 0);
    let c = &tb.clients[0];
    let before = routes_of(c);
    let mut client = tb.connect(0, &profile);
    let status = client.output();
    assert!(status.contains("address     10.250.0."), "{status}");
    assert!(status.contains("Authorized use only."), "{status}");

    // Exactly the pushed routes: the route table's destinations, via the tunnel.
    let during = routes_of(c);
    assert_eq!(
        ours(&during),
        vec![
            "10.20.0.0/16 dev cvpn0 proto 179 scope link",
            "192.168.1.0/24 dev cvpn0 proto 179 scope link"
        ],
        "{during:?}"
    );
    assert_eq!(during.len(), before.len() + 2, "{during:?}");

    sh_ok(c, &format!("ping -c 2 -W 3 {TARGET}"));
    sh_ok(c, &format!("ping -c 2 -W 3 {PEERED}"));

    // 20 MB, byte-exact; the target sees the ENI address.
    // 20 MB the other way: what the client's tun device reads goes out
    // behind frame headers written in place.
    transfers_both_ways_from_eni(&tb, c, 5001, (7, 9));

    // The stream crossed as segmentation-offload frames, not 1500-byte packets.
    let v = tb.connections();
    let session = &v["connections"][0];
    let average = session["egress-bytes"].as_u64().unwrap()
        / session["egress-packets"].as_u64().unwrap().max(1);
    assert!(
        average > 3000,
        "average packet to the client {average} bytes: {v}"
    );

    // Leaving removes every route and the tun device.
    assert_eq!(client.stop(), 0, "{}", client.output());
    assert_eq!(routes_of(c), before);
    assert!(
        !sh(c, "ip link show cvpn0").status.success(),
        "cvpn0 left behind"
    );
}

#[test]
fn full_tunnel_routes_everything_but_the_gateway() {
    let tb = Testbed::new("full", 1);
    let config = tb.write_config("split_tunnel = false", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &[], 0);
    let c = &tb.clients[0];
    let before = routes_of(c);
    let mut client = tb.connect(0, &profile);
    let during = routes_of(c);
    assert_eq!(
        ours(&during),
        vec![
            "0.0.0.0/1 dev cvpn0 proto 179 scope link",
            "128.0.0.0/1 dev cvpn0 proto 179 scope link",
            "198.18.0.1 dev c0 proto 179 scope link",
        ],
        "{during:?}"
    );
    assert!(
        during.contains(&"default via 198.18.0.1 dev c0".to_string()),
        "{during:?}"
    );
    sh_ok(c, &format!("ping -c 1 -W 3 {TARGET}"));
    sh_ok(c, &format!("ping -c 1 -W 3 {PEERED}"));
    assert_eq!(client.stop(), 0);
    assert_eq!(routes_of(c), before);
}

#[test]
fn killed_client_leftovers_are_removed_at_next_start() {
    let tb = Testbed::new("kill", 1);
    let config = tb.write_config("split_tunnel = false", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &[], 0);
    let c = &tb.clients[0];
    let before = routes_of(c);
    let mut client = tb.connect(0, &profile);
    client.signal("KILL");
    client.wait(5);
    // The tun device dies with the process; the host route to the gateway stays.
    assert_eq!(
        ours(&routes_of(c)),
        vec!["198.18.0.1 dev c0 proto 179 scope link"]
    );
    let mut again = tb.connect(0, &profile);
    assert_eq!(ours(&routes_of(c)).len(), 3);
    assert_eq!(again.stop(), 0);
    assert_eq!(routes_of(c), before);
}
