//! `metrics_listen`: what Prometheus would scrape follows the sessions, the
//! traffic through them and the packets the gateway refused.

use std::process::Command;

use cvpn_e2e::netns::{run_ok, sh};
use cvpn_e2e::testbed::{PEERED, TARGET, Testbed};

/// Everyone may reach the target network, nobody the peered one.
const RULES: &str = "[[authorization_rules]]\ndestination = \"192.168.1.0/24\"\n";

/// One HTTP request from inside the gateway's namespace (bash's /dev/tcp:
/// no HTTP client needed on the host).
fn http(ns: &str, request_line: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/9477 && printf '{request_line}\\r\\nHost: x\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
    );
    run_ok(Command::new("ip").args(["netns", "exec", ns, "bash", "-c", &script]))
}

/// The value of the sample named exactly `name` (with its labels).
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}

#[test]
fn metrics_follow_sessions_traffic_and_drops() {
    let tb = Testbed::new("metrics", 1);
    let config = tb.write_config("metrics_listen = \"127.0.0.1:9477\"", RULES);
    let _gw = tb.start_gateway(&config);
    let before = http(&tb.gateway, "GET /metrics HTTP/1.1");
    assert!(before.starts_with("HTTP/1.1 200 OK"), "{before}");
    assert_eq!(sample(&before, "cvpn_sessions_active"), 0);
    assert_eq!(sample(&before, "cvpn_client_addresses_free"), 1021);

    let profile = tb.client_profile("alice", &[], 0);
    let mut client = tb.connect(0, &profile);
    let c = &tb.clients[0];
    let out = sh(c, &format!("ping -n -c 3 -i 0.2 -W 5 {TARGET} 2>&1"));
    assert!(out.status.success(), "{out:?}");
    // Not authorized: answered by the gateway, counted as a drop.
    let _ = sh(c, &format!("ping -n -c 1 -W 2 {PEERED}"));
    let during = http(&tb.gateway, "GET /metrics HTTP/1.1");
    assert_eq!(sample(&during, "cvpn_sessions_active"), 1);
    assert_eq!(sample(&during, "cvpn_client_addresses_free"), 1020);
    assert_eq!(
        sample(
            &during,
            "cvpn_connection_attempts_total{status=\"successful\"}"
        ),
        1
    );
    assert!(sample(&during, "cvpn_tunnel_packets_total{direction=\"ingress\"}") >= 4);
    assert!(sample(&during, "cvpn_tunnel_packets_total{direction=\"egress\"}") >= 3);
    assert!(sample(&during, "cvpn_tunnel_bytes_total{direction=\"egress\"}") >= 3 * 84);
    assert_eq!(
        sample(
            &during,
            "cvpn_dropped_packets_total{reason=\"not_authorized\"}"
        ),
        1
    );

    client.stop();
    let mut after = String::new();
    for _ in 0..50 {
        after = http(&tb.gateway, "GET /metrics HTTP/1.1");
        if sample(&after, "cvpn_sessions_active") == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(sample(&after, "cvpn_sessions_active"), 0);
    assert_eq!(sample(&after, "cvpn_sessions_ended_total"), 1);
    // The ended session's traffic stays in the totals.
    assert!(sample(&after, "cvpn_tunnel_packets_total{direction=\"ingress\"}") >= 4);

    assert!(http(&tb.gateway, "GET / HTTP/1.1").starts_with("HTTP/1.1 404"));
    assert!(http(&tb.gateway, "DELETE /metrics HTTP/1.1").starts_with("HTTP/1.1 405"));
    assert!(http(&tb.gateway, "hello").starts_with("HTTP/1.1 400"));
}
