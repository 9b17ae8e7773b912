//! What one node does reaches the others: `terminate` on any node ends a
//! session on another, a second session of an identity on another node
//! replaces the first, and a revocation in one node's CRL cuts a session
//! another node holds within 2 s and is refused everywhere after.

use std::time::{Duration, Instant};

use cvpn_e2e::etcd::{Etcd, cluster_table, shared_pki_config};
use cvpn_e2e::testbed::Testbed;

const RULES: &str = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";

/// Waits (at most 10 s) for a `--once` client to end; returns when it
/// ended, measured from `since`, and its output.
fn ended(client: &mut cvpn_e2e::netns::Proc, since: Instant) -> (Duration, String) {
    assert!(
        client.wait(10).is_some(),
        "still connected:\n{}",
        client.output()
    );
    (since.elapsed(), client.output())
}

#[test]
fn terminate_replacement_and_revocation_reach_every_node() {
    let mut a = Testbed::new("clr-a", 2);
    let b = Testbed::new("clr-b", 2);
    let mut etcd = Etcd::start(&mut a.netns);
    etcd.join(&a.gateway, "10.0.9.21");
    etcd.join(&b.gateway, "10.0.9.22");
    let config_a = a.write_config(&cluster_table("gw-a", "198.18.0.1:443", &etcd), RULES);
    let config_b = shared_pki_config(
        &a,
        &b,
        &cluster_table("gw-b", "198.18.0.1:443", &etcd),
        RULES,
    );
    let mut gw_a = a.start_gateway(&config_a);
    let _gw_b = b.start_gateway(&config_b);

    // terminate on gw-b ends carol's session on gw-a.
    let carol = a.client_profile("carol", &[], 0);
    let mut carol_on_a = a.connect(0, &carol);
    let asked = Instant::now();
    let said = cvpn_e2e::ok(
        std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
            .args(["terminate", "--cn", "carol", "--control"])
            .arg(b.control_socket()),
    );
    assert!(said.contains("terminated cvpn-conn-"), "{said}");
    let (took, out) = ended(&mut carol_on_a, asked);
    assert!(out.contains("terminated by the administrator"), "{out}");
    eprintln!("terminate on gw-b ended a session on gw-a in {took:?}");
    assert!(took <= Duration::from_secs(2), "{took:?}");

    // carol again on gw-a, then on gw-b: the newer replaces the older.
    let mut carol_on_a = a.connect(0, &carol);
    let asked = Instant::now();
    let _carol_on_b = b.connect(0, &carol);
    let (took, out) = ended(&mut carol_on_a, asked);
    assert!(
        out.contains("replaced by a new session of the same identity"),
        "{out}"
    );
    eprintln!("a session on gw-b replaced one on gw-a in {took:?}");
    let listed = a.connections()["connections"].clone();
    let carols: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["common-name"] == "carol")
        .collect();
    assert!(carols.len() == 1 && carols[0]["node"] == "gw-b", "{listed}");

    // dave on gw-b; revoked in gw-a's CRL: cut within 2 s, refused on
    // both nodes after.
    a.pki.ok(&["issue", "client", "dave"]);
    let dave = a.export_profile("dave", 1);
    let mut dave_on_b = b.connect(1, &dave);
    a.pki.ok(&["revoke", "dave"]);
    let revoked = Instant::now();
    let (took, out) = ended(&mut dave_on_b, revoked);
    assert!(out.contains("certificate revoked"), "{out}");
    eprintln!("a revocation on gw-a cut a session on gw-b in {took:?}");
    assert!(took <= Duration::from_secs(2), "{took:?}");
    for (bed, i) in [(&a, 1), (&b, 1)] {
        let mut refused = bed.spawn_client(i, &dave);
        assert!(
            refused.wait(20).is_some_and(|c| c != 0),
            "{}",
            refused.output()
        );
        assert!(
            refused.output().to_lowercase().contains("revoked"),
            "{}",
            refused.output()
        );
    }

    // gw-a cut off from the store while it moves on and compacts its
    // history: gw-a's watch cannot resume where it was, lists anew, and
    // still hears the requests of other nodes.
    a.pki.ok(&["issue", "client", "erin"]);
    let erin = a.export_profile("erin", 0);
    let mut erin_on_a = a.connect(0, &erin);
    cvpn_e2e::netns::sh_ok(&a.gateway, "ip link set etcd0 down");
    let member = format!("http://{}:2379", cvpn_e2e::etcd::MEMBERS[0]);
    // Keys outside the cluster's prefix: only the revision moves.
    cvpn_e2e::netns::sh_ok(
        &etcd.ns,
        &format!(
            "for i in 1 2 3 4 5; do k=$(printf other/$i | base64 -w0); \
             curl -sf -X POST {member}/v3/kv/put -d \"{{\\\"key\\\":\\\"$k\\\",\\\"value\\\":\\\"eA==\\\"}}\"; done"
        ),
    );
    let head = cvpn_e2e::netns::sh_ok(
        &etcd.ns,
        &format!("curl -sf -X POST {member}/v3/kv/range -d '{{\"key\":\"AA==\"}}'"),
    );
    let revision: serde_json::Value = serde_json::from_str(&head).unwrap();
    let revision = revision["header"]["revision"].as_str().unwrap().to_string();
    cvpn_e2e::netns::sh_ok(
        &etcd.ns,
        &format!("curl -sf -X POST {member}/v3/kv/compaction -d '{{\"revision\":\"{revision}\"}}'"),
    );
    // Long enough for gw-a to see its connection to the store is gone.
    std::thread::sleep(Duration::from_secs(6));
    cvpn_e2e::netns::sh_ok(&a.gateway, "ip link set etcd0 up");
    gw_a.wait_for("listing anew", 20);
    let asked = Instant::now();
    cvpn_e2e::ok(
        std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
            .args(["terminate", "--cn", "erin", "--control"])
            .arg(b.control_socket()),
    );
    let (took, out) = ended(&mut erin_on_a, asked);
    assert!(out.contains("terminated by the administrator"), "{out}");
    assert!(took <= Duration::from_secs(2), "{took:?}");
}
