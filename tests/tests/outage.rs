//! The gateway goes away and comes back: a full-tunnel client leaks
//! nothing in clear meanwhile (IPv4 or IPv6), and every client gets its
//! address back. Sessions of one identity and of the endpoint are bounded.

use std::time::{Duration, Instant};

use cvpn_e2e::netns::{sh, sh_ok};
use cvpn_e2e::testbed::{TARGET, Testbed};

const ALL_USERS: &str = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";
const OUTSIDE_V6: &str = "2001:db8:99::1";

/// Counters on the client's physical interface for what must only ever
/// cross inside the tunnel.
fn count_clear_text(ns: &str) {
    sh_ok(
        ns,
        &format!(
            "nft -f - <<'EOF'
table inet leakcheck {{
  chain out {{
    type filter hook postrouting priority 0; policy accept;
    oifname \"c0\" ip daddr {TARGET} counter
    oifname \"c0\" ip6 daddr 2001:db8:99::/48 counter
  }}
}}
EOF"
        ),
    );
}

/// Packets the counters saw: (IPv4 to the target, IPv6 outside).
fn leaked(ns: &str) -> (u64, u64) {
    let listing = sh_ok(ns, "nft list chain inet leakcheck out");
    let mut counts = listing.lines().filter_map(|l| {
        let at = l.find("packets ")? + "packets ".len();
        l[at..].split_whitespace().next()?.parse::<u64>().ok()
    });
    (counts.next().unwrap_or(99), counts.next().unwrap_or(99))
}

/// Waits (at most `secs`) until a ping from `ns` to the target answers;
/// returns how long it took.
fn ping_back(ns: &str, secs: u64) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if sh(ns, &format!("ping -c 1 -W 1 {TARGET}")).status.success() {
            return start.elapsed();
        }
    }
    panic!("no answer from the target within {secs}s");
}

#[test]
fn full_tunnel_outage_leaks_nothing_and_addresses_stick() {
    let tb = Testbed::new("outage", 2);
    let c = tb.clients[0].clone();
    // The client's outside network also has IPv6, with a default route.
    sh_ok(
        &c,
        "ip -6 addr add 2001:db8:1::2/64 dev c0 nodad && ip -6 route add default via 2001:db8:1::1",
    );
    sh_ok(&tb.gateway, "ip -6 addr add 2001:db8:1::1/64 dev gc0 nodad");
    count_clear_text(&c);
    let config = tb.write_config("split_tunnel = false", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    let alice = tb.client_profile("alice", &[], 0);
    let bob = tb.client_profile("bob", &[], 1);
    let mut ca = tb.connect_persistent(0, &alice);
    let _cb = tb.connect_persistent(1, &bob);
    sh_ok(&c, &format!("ping -c 2 -W 3 {TARGET}"));
    let before = tb.addresses();
    assert_eq!(before.len(), 2, "{before:?}");
    // With the tunnel up, IPv6 fails on the client, not outside.
    assert!(
        !sh(&c, &format!("ping -6 -c 1 -W 1 {OUTSIDE_V6}"))
            .status
            .success()
    );
    assert_eq!(leaked(&c), (0, 0));

    gw.signal("KILL");
    gw.wait(5);
    ca.wait_for("connection lost", 10);
    // The outage: the client keeps its tun device and routes.
    let routes = sh_ok(&c, "ip route show; ip -6 route show");
    assert!(routes.contains("0.0.0.0/1 dev cvpn0"), "{routes}");
    assert!(routes.contains("unreachable ::/1"), "{routes}");
    sh(&c, &format!("ping -c 5 -i 0.2 -W 1 {TARGET}"));
    sh(&c, &format!("ping -6 -c 2 -i 0.2 -W 1 {OUTSIDE_V6}"));
    assert_eq!(leaked(&c), (0, 0), "clear text left the client");

    let restarted = Instant::now();
    let _gw = tb.start_gateway(&config);
    ping_back(&c, 8);
    let total = restarted.elapsed();
    eprintln!("traffic back {total:?} after the restart");
    assert!(
        total <= Duration::from_secs(5),
        "traffic back only {total:?} after the restart"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tb.addresses().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tb.addresses(), before, "addresses moved across kill -9");
    assert_eq!(leaked(&c), (0, 0));

    // On exit everything the client added goes, IPv6 block included.
    assert_eq!(ca.stop(), 0);
    let routes = sh_ok(&c, "ip route show; ip -6 route show");
    assert!(!routes.contains("proto 179"), "{routes}");
    assert!(!sh(&c, "ip link show cvpn0").status.success());
}

#[test]
fn sessions_per_identity_and_per_endpoint_are_bounded() {
    let tb = Testbed::new("limits", 3);
    let config = tb.write_config("max_connections = 2", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    let alice = tb.client_profile("alice", &[], 0);
    let bob = tb.client_profile("bob", &[], 1);
    let carol = tb.client_profile("carol", &[], 0);

    // Alice's address comes back after a reconnect, and bob, connecting
    // meanwhile, does not take it.
    let mut a = tb.connect(0, &alice);
    let first = tb.addresses()["alice"].clone();
    assert_eq!(a.stop(), 0);
    let _b = tb.connect(1, &bob);
    assert_ne!(tb.addresses()["bob"], first);
    let mut a = tb.connect(0, &alice);
    assert_eq!(tb.addresses()["alice"], first);

    // A second session with alice's certificate replaces the first, which
    // is told why; the address stays hers.
    let alice_elsewhere = tb.export_profile("alice", 2);
    let _a2 = tb.connect(2, &alice_elsewhere);
    a.wait(10).expect("the replaced session did not end");
    assert!(
        a.output()
            .contains("replaced by a new session of the same identity"),
        "{}",
        a.output()
    );
    let now = tb.addresses();
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(now["alice"], first);

    // The endpoint is full: carol is refused with the reason.
    let mut c = tb.spawn_client(0, &carol);
    assert_ne!(c.wait(20), Some(0), "{}", c.output());
    assert!(c.output().contains("max_connections (2)"), "{}", c.output());
    let log = std::fs::read_to_string(tb.connection_log()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"carol\"") && l.contains("max_connections (2)")),
        "{log}"
    );
}
