//! One endpoint on several gateways over etcd (three members of Debian's
//! etcd-server): each gateway registers itself under a lease it keeps
//! alive; `cluster status` lists the live nodes and flags a node whose
//! policy differs, naming the key; a stopped gateway leaves the cluster
//! at once, a killed one within the lease's TTL.

use std::time::{Duration, Instant};

use cvpn_e2e::etcd::{Etcd, cluster_table, shared_pki_config};
use cvpn_e2e::netns::{in_ns, sh_ok};
use cvpn_e2e::testbed::Testbed;

const RULES: &str = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";

/// `cluster status` run in `ns` with `config`: (exit code, output).
fn status(ns: &str, config: &std::path::Path) -> (i32, String) {
    let out = cvpn_e2e::run(
        in_ns(ns, &cvpn_e2e::bin("cvpn-gw"))
            .args(["cluster", "status", "--config"])
            .arg(config),
    );
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Polls `cluster status` (at most `secs`) until `done` says yes.
fn status_until(
    ns: &str,
    config: &std::path::Path,
    secs: u64,
    done: impl Fn(i32, &str) -> bool,
) -> (i32, String, Duration) {
    let start = Instant::now();
    loop {
        let (code, out) = status(ns, config);
        if done(code, &out) || start.elapsed() > Duration::from_secs(secs) {
            return (code, out, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn lists(out: &str, node: &str) -> bool {
    out.lines().any(|l| l.starts_with(&format!("{node} ")))
}

#[test]
fn nodes_register_and_status_flags_a_differing_policy() {
    let mut a = Testbed::new("clus-a", 1);
    let b = Testbed::new("clus-b", 1);
    let mut etcd = Etcd::start(&mut a.netns);
    etcd.join(&a.gateway, "10.0.9.21");
    etcd.join(&b.gateway, "10.0.9.22");

    let config_a = a.write_config(
        &format!(
            "metrics_listen = \"127.0.0.1:9477\"\n{}",
            cluster_table("gw-a", "198.18.0.1:443", &etcd)
        ),
        RULES,
    );
    // gw-b has one more rule: its policy differs in that key alone.
    let config_b = b.write_config(
        &cluster_table("gw-b", "198.18.100.1:443", &etcd),
        &format!("{RULES}\n[[authorization_rules]]\ndestination = \"10.20.0.0/16\"\naccess_group = \"ops\"\n"),
    );
    let _gw_a = a.start_gateway(&config_a);
    let mut gw_b = b.start_gateway(&config_b);

    let (code, out, _) = status_until(&a.gateway, &config_a, 15, |_, o| {
        lists(o, "gw-a") && lists(o, "gw-b")
    });
    assert!(lists(&out, "gw-a") && lists(&out, "gw-b"), "{out}");
    assert!(out.contains("198.18.100.1:443"), "{out}");
    assert_eq!(code, 1, "differing policies: {out}");
    assert!(
        out.contains("policy differs: gw-a and gw-b: authorization_rules"),
        "{out}"
    );

    // A node's sessions, connection log and metrics say which node.
    let profile = a.client_profile("carol", &[], 0);
    let _carol = a.connect(0, &profile);
    assert_eq!(a.connections()["connections"][0]["node"], "gw-a");
    let table = cvpn_e2e::ok(
        std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
            .args(["connections", "--control"])
            .arg(a.control_socket()),
    );
    assert!(
        table.lines().next().is_some_and(|h| h.ends_with("NODE"))
            && table.lines().nth(1).is_some_and(|l| l.ends_with("gw-a")),
        "{table}"
    );
    let log = cvpn_e2e::checks::connection_log(&a);
    assert!(log.iter().all(|r| r["node"] == "gw-a"), "{log:?}");
    // Counted at each heartbeat (every 3 s).
    let deadline = Instant::now() + Duration::from_secs(8);
    let metrics = loop {
        let m = sh_ok(&a.gateway, "curl -s http://127.0.0.1:9477/metrics");
        if m.contains("cvpn_cluster_nodes 2") || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        metrics.contains("cvpn_cluster_store_up 1")
            && metrics.contains("cvpn_cluster_nodes 2")
            && metrics.contains("cvpn_cluster_store_latency_seconds_count "),
        "{metrics}"
    );

    // A stopped gateway revokes its lease: gone at once, and the rest
    // agree.
    assert_eq!(gw_b.stop(), 0, "{}", gw_b.output());
    let (code, out, took) =
        status_until(&a.gateway, &config_a, 5, |c, o| c == 0 && !lists(o, "gw-b"));
    assert!(code == 0 && !lists(&out, "gw-b"), "{out}");
    eprintln!("a stopped node left the registry in {took:?}");

    // A killed gateway vanishes within the lease's TTL (10 s).
    let mut gw_b = b.start_gateway(&config_b);
    let (_, out, _) = status_until(&a.gateway, &config_a, 15, |_, o| lists(o, "gw-b"));
    assert!(lists(&out, "gw-b"), "{out}");
    gw_b.signal("KILL");
    let killed = Instant::now();
    let (_, out, _) = status_until(&a.gateway, &config_a, 20, |_, o| !lists(o, "gw-b"));
    assert!(!lists(&out, "gw-b"), "{out}");
    let gone = killed.elapsed();
    assert!(gone <= Duration::from_secs(15), "gone after {gone:?}");
    eprintln!("a killed node left the registry in {gone:?}");
    let _ = gw_b.wait(5);
    sh_ok(&b.gateway, "true");
}

/// An identity keeps one address across the cluster, and no address goes
/// to two identities on two nodes; with the whole store down, sessions
/// keep forwarding and new clients are refused for now, then admitted
/// once it is back.
#[test]
fn one_address_per_identity_across_nodes() {
    let mut a = Testbed::new("clad-a", 2);
    let b = Testbed::new("clad-b", 2);
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
    let _gw_a = a.start_gateway(&config_a);
    let _gw_b = b.start_gateway(&config_b);

    let carol = a.client_profile("carol", &[], 0);
    let mut carol_on_a = a.connect(0, &carol);
    let x = a.addresses()["carol"].clone();
    // gw-b alone would give dave the first free address, carol's.
    a.pki.ok(&["issue", "client", "dave"]);
    let dave = a.export_profile("dave", 0);
    let _dave_on_b = b.connect(0, &dave);
    let y = b.addresses()["dave"].clone();
    assert_ne!(x, y, "two identities, one address");
    // Either node lists both sessions, each with its node.
    let listed: Vec<(String, String)> = a.connections()["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["common-name"].as_str().unwrap_or("").to_string(),
                c["node"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        listed.contains(&("carol".into(), "gw-a".into()))
            && listed.contains(&("dave".into(), "gw-b".into())),
        "{listed:?}"
    );
    // carol moves to gw-b: the same address.
    carol_on_a.stop();
    let _carol_on_b = b.connect(1, &carol);
    assert_eq!(b.addresses()["carol"], x, "carol's address follows her");
    cvpn_e2e::checks::reaches(&b.clients[1], cvpn_e2e::testbed::TARGET);

    // The store down: sessions forward, a new client is refused for now.
    etcd.stop_all();
    a.pki.ok(&["issue", "client", "erin"]);
    let erin = a.export_profile("erin", 1);
    let mut refused = a.spawn_client(1, &erin);
    refused.wait(20);
    assert!(
        refused.output().contains("cluster store unavailable"),
        "{}",
        refused.output()
    );
    cvpn_e2e::checks::reaches(&b.clients[1], cvpn_e2e::testbed::TARGET);
    etcd.start_all();
    let back = Instant::now();
    let _erin = a.connect(1, &erin);
    eprintln!("admitted {:?} after the store returned", back.elapsed());
    assert!(back.elapsed() < Duration::from_secs(10));
}
