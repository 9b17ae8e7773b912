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
    assert_eq!(
        sample(&before, "cvpn_active_connections{protocol=\"cvpn\"}"),
        0
    );
    // The testbed's CRL is good for months.
    assert!(sample(&before, "cvpn_crl_seconds_to_expiry") > 86_400);
    assert_eq!(sample(&before, "cvpn_client_addresses_free"), 1021);

    let profile = tb.client_profile("alice", &[], 0);
    let mut client = tb.connect(0, &profile);
    let c = &tb.clients[0];
    let out = sh(c, &format!("ping -n -c 3 -i 0.2 -W 5 {TARGET} 2>&1"));
    assert!(out.status.success(), "{out:?}");
    // Not authorized: answered by the gateway, counted as a drop.
    let _ = sh(c, &format!("ping -n -c 1 -W 2 {PEERED}"));
    let during = http(&tb.gateway, "GET /metrics HTTP/1.1");
    assert_eq!(
        sample(&during, "cvpn_active_connections{protocol=\"cvpn\"}"),
        1
    );
    assert_eq!(sample(&during, "cvpn_handshake_duration_seconds_count"), 1);
    assert_eq!(sample(&during, "cvpn_client_addresses_free"), 1020);
    assert_eq!(
        sample(
            &during,
            "cvpn_connection_attempts_total{status=\"successful\"}"
        ),
        1
    );
    assert!(sample(&during, "cvpn_ingress_packets_total{protocol=\"cvpn\"}") >= 4);
    assert!(sample(&during, "cvpn_egress_packets_total{protocol=\"cvpn\"}") >= 3);
    assert!(sample(&during, "cvpn_egress_bytes_total{protocol=\"cvpn\"}") >= 3 * 84);
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
        if sample(&after, "cvpn_active_connections{protocol=\"cvpn\"}") == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        sample(&after, "cvpn_active_connections{protocol=\"cvpn\"}"),
        0
    );
    assert_eq!(
        sample(&after, "cvpn_sessions_ended_total{protocol=\"cvpn\"}"),
        1
    );
    // The ended session's traffic stays in the totals.
    assert!(sample(&after, "cvpn_ingress_packets_total{protocol=\"cvpn\"}") >= 4);

    // An OpenVPN client is counted as one; a revoked one as a failure
    // by reason.
    let bob = tb.client_profile("bob", &[], 0);
    let mut cmd = cvpn_e2e::netns::in_ns(c, std::path::Path::new("openvpn"));
    cmd.arg("--config").arg(&bob);
    let mut ovpn = cvpn_e2e::netns::Proc::spawn("openvpn", cmd);
    ovpn.wait_for("Initialization Sequence Completed", 30);
    let out = sh(c, &format!("ping -n -c 2 -i 0.2 -W 5 {TARGET} 2>&1"));
    assert!(out.status.success(), "{out:?}");
    let with_ovpn = http(&tb.gateway, "GET /metrics HTTP/1.1");
    assert_eq!(
        sample(&with_ovpn, "cvpn_active_connections{protocol=\"openvpn\"}"),
        1
    );
    assert!(
        sample(
            &with_ovpn,
            "cvpn_ingress_packets_total{protocol=\"openvpn\"}"
        ) >= 2
    );
    ovpn.stop();
    tb.pki.ok(&["revoke", "alice"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut refused = tb.spawn_client(0, &profile);
    refused.wait(15);
    let failed = http(&tb.gateway, "GET /metrics HTTP/1.1");
    assert!(
        sample(
            &failed,
            "cvpn_authentication_failures_total{reason=\"certificate_revoked\"}"
        ) >= 1,
        "{failed}"
    );

    // Every panel of the Grafana dashboard queries a metric the gateway
    // exports.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/cvpn.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for panel in panels {
        let exprs: Vec<&str> = panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["expr"].as_str().unwrap())
            .collect();
        assert!(!exprs.is_empty(), "{panel}");
        for expr in exprs {
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("cvpn_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                let exported = failed.lines().any(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                });
                assert!(
                    exported,
                    "panel {} queries {name}, not exported",
                    panel["title"]
                );
            }
        }
    }

    assert!(http(&tb.gateway, "GET / HTTP/1.1").starts_with("HTTP/1.1 404"));
    assert!(http(&tb.gateway, "DELETE /metrics HTTP/1.1").starts_with("HTTP/1.1 405"));
    assert!(http(&tb.gateway, "hello").starts_with("HTTP/1.1 400"));
}
