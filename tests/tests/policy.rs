//! The gateway's per-packet policy, seen from clients: authorization rules
//! as the managed service documents them, ICMP answers for refused
//! packets, anti-spoofing, and no connections opened toward clients.

use cvpn_e2e::checks::{denied, ping, reaches};
use cvpn_e2e::netns::{Proc, in_ns, sh, sh_ok};
use cvpn_e2e::testbed::{PEERED, PEERED_ROUTER, ROUTER, TARGET, Testbed};

/// dev -> 10.20.0.0/16; mgr -> 0.0.0.0/0; mgr -> 10.20.0.2/32 (the
/// documented scenario), plus dev and mgr both -> 192.168.1.254/32 (equal
/// prefixes are a union).
const RULES: &str = r#"
[[authorization_rules]]
destination = "10.20.0.0/16"
access_group = "dev"

[[authorization_rules]]
destination = "0.0.0.0/0"
access_group = "mgr"

[[authorization_rules]]
destination = "10.20.0.2/32"
access_group = "mgr"

[[authorization_rules]]
destination = "192.168.1.254/32"
access_group = "dev"

[[authorization_rules]]
destination = "192.168.1.254/32"
access_group = "mgr"
"#;

fn unrouted(ns: &str, dst: &str) {
    let (ok, out) = ping(ns, dst);
    assert!(
        !ok && out.contains("Destination Net Unreachable"),
        "{ns} -> {dst} should be unrouted: {out}"
    );
}

#[test]
fn authorization_rules_as_documented() {
    let tb = Testbed::new("authz", 2);
    let config = tb.write_config("", RULES);
    let _gw = tb.start_gateway(&config);
    let dev_profile = tb.client_profile("dana", &["dev"], 0);
    let mgr_profile = tb.client_profile("mona", &["mgr", "finance"], 1);
    let _dev = tb.connect(0, &dev_profile);
    let _mgr = tb.connect(1, &mgr_profile);
    let (dev, mgr) = (&tb.clients[0], &tb.clients[1]);

    // The more specific rule hides the shorter one.
    reaches(dev, PEERED_ROUTER);
    denied(dev, PEERED);
    reaches(mgr, PEERED);
    denied(mgr, PEERED_ROUTER);
    // 0.0.0.0/0 only decides where nothing more specific matches.
    reaches(mgr, TARGET);
    denied(dev, TARGET);
    // Equal prefixes are a union.
    reaches(dev, ROUTER);
    reaches(mgr, ROUTER);
    // No route: net unreachable, even with a rule for everything.
    unrouted(mgr, "172.31.0.1");
    unrouted(dev, "172.31.0.1");

    // A denied TCP connection fails at once too: Linux reports the ICMP
    // "packet filtered" answer to a SYN as EHOSTUNREACH.
    let out = sh(
        dev,
        &format!(
            "{} fetch --connect {TARGET}:5009 --timeout 20 2>&1",
            tb.helper().display()
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("No route to host"),
        "{text}"
    );
}

/// Counts ICMP echo requests arriving at the target from `src`.
fn count_pings_from(ns: &str, src: &str) -> u64 {
    let listing = sh_ok(ns, "nft list chain ip probe input");
    listing
        .lines()
        .find(|l| l.contains(src))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {listing}"))
}

#[test]
fn forged_sources_never_reach_the_target() {
    let tb = Testbed::new("spoof", 1);
    let config = tb.write_config("", "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n");
    let _gw = tb.start_gateway(&config);
    let profile = tb.client_profile("eve", &[], 0);
    let _client = tb.connect(0, &profile);
    let c = &tb.clients[0];
    sh_ok(
        &tb.target,
        "nft add table ip probe && nft add chain ip probe input '{ type filter hook input priority 0; }' && \
         nft add rule ip probe input ip saddr 192.168.1.10 icmp type echo-request counter",
    );
    sh_ok(c, &format!("ping -c 1 -W 3 {TARGET}"));
    assert_eq!(count_pings_from(&tb.target, "192.168.1.10"), 1);

    // A second address on the tun device: packets leave with a source the
    // gateway did not assign.
    sh_ok(c, "ip addr add 10.250.0.99/32 dev cvpn0");
    let (ok, _) = ping(c, &format!("-I 10.250.0.99 {TARGET}"));
    assert!(!ok);
    let (ok, _) = ping(c, &format!("-I 10.250.0.99 {PEERED}"));
    assert!(!ok);
    assert_eq!(
        count_pings_from(&tb.target, "192.168.1.10"),
        1,
        "a forged packet reached the target"
    );

    let v = tb.connections();
    assert!(v["drops"]["spoofed"].as_u64().unwrap() >= 2, "{v}");
    // The session survives: the real address still works.
    sh_ok(c, &format!("ping -c 1 -W 3 {TARGET}"));
}

#[test]
fn target_cannot_open_connections_to_clients() {
    let tb = Testbed::new("inbound", 1);
    let config = tb.write_config("", "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n");
    let _gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &[], 0);
    let client = tb.connect(0, &profile);
    let addr = client
        .output()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("address")
                .map(|r| r.trim().split('/').next().unwrap_or("").to_string())
        })
        .expect("address in status");
    // Even with a route to the client CIDR through the gateway.
    sh_ok(&tb.target, "ip route add 10.250.0.0/22 via 192.168.1.1");
    let mut listener = Proc::spawn("client listener", {
        let mut cmd = in_ns(&tb.clients[0], &tb.helper());
        cmd.args([
            "serve",
            "--listen",
            "0.0.0.0:5002",
            "--bytes",
            "10",
            "--timeout",
            "15",
        ]);
        cmd
    });
    listener.wait_for("listening", 10);
    let (ok, out) = ping(&tb.target, &addr);
    assert!(!ok, "target pinged the client: {out}");
    let out = sh(
        &tb.target,
        &format!(
            "{} fetch --connect {addr}:5002 --bytes 10 --timeout 3 2>&1",
            tb.helper().display()
        ),
    );
    assert!(
        !out.status.success(),
        "target connected to the client: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !listener.output().contains("peer="),
        "{}",
        listener.output()
    );
    // While the client's own connections still work.
    sh_ok(&tb.clients[0], &format!("ping -c 1 -W 3 {TARGET}"));
}
