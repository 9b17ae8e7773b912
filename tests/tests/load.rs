//! The load tool against a real gateway: many concurrent mutual-TLS
//! sessions, each passing an echo through the tunnel to the target.

use cvpn_e2e::netns::{in_ns, sh_ok};
use cvpn_e2e::testbed::{TARGET, Testbed};

#[test]
fn load_tool_sessions_all_carry_traffic() {
    let tb = Testbed::new("load", 1);
    // Every session comes from one source address.
    let config = tb.write_config(
        "handshake_rate_per_source = 1000000",
        "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n",
    );
    let _gw = tb.start_gateway(&config);
    tb.pki.ok(&["issue", "client", "load", "--count", "60"]);
    sh_ok(&tb.target, "echo 0 > /proc/sys/net/ipv4/icmp_ratelimit");
    let mut cmd = in_ns(&tb.clients[0], &cvpn_e2e::bin("cvpn-load"));
    cmd.args([
        "--remote",
        "198.18.0.1:443",
        "--count",
        "60",
        "--concurrency",
        "16",
        "--ping",
        TARGET,
        "--hold",
        "1",
        "--json",
        "--pki",
    ])
    .arg(&tb.pki.dir);
    let out = cvpn_e2e::ok(&mut cmd);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON report");
    assert_eq!(v["established"], 60, "{v}");
    assert_eq!(v["echo_replies"], 60, "{v}");
    assert!(v["handshakes_per_second"].as_f64().unwrap() > 0.0);
    // The sessions were real: the gateway logged each one.
    let log = std::fs::read_to_string(tb.connection_log()).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"successful\"")).count(),
        60
    );
}
