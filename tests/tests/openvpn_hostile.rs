//! Stock OpenVPN clients that the endpoint must serve or refuse the way
//! OpenVPN's own server does: TLS 1.2-only clients, clients without a
//! shared data cipher, a full endpoint, a client restarted on the same
//! source port, a flood of resets from a client's address, and keys
//! renegotiated by the server for clients that never do.

use std::time::{Duration, Instant};

use cvpn_e2e::checks::{connection_log, pings_answered, transfers_both_ways_from_eni};
use cvpn_e2e::netns::sh_ok;
use cvpn_e2e::openvpn::{openvpn, spawn_openvpn, wait_connected};
use cvpn_e2e::testbed::{TARGET, Testbed};

const ALL_USERS: &str = r#"
[[authorization_rules]]
destination = "0.0.0.0/0"
"#;

const UDP: &str = "transport_protocol = \"udp\"";

/// The connection log's failed attempts, as (common name, reason).
fn failures(tb: &Testbed) -> Vec<(String, String)> {
    connection_log(tb)
        .iter()
        .filter(|r| r["connection-attempt-status"] == "failed")
        .map(|r| {
            (
                r["common-name"].as_str().unwrap_or("").to_string(),
                r["connection-attempt-failure-reason"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

/// Waits up to `secs` for a line of the connection log that `pred` takes.
fn wait_log(tb: &Testbed, secs: u64, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if connection_log(tb).iter().any(&pred) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn tls_1_2_clients_connect_unless_min_version_says_1_3() {
    let tb = Testbed::new("ovpn-tls12", 1);
    let config = tb.write_config(UDP, ALL_USERS);
    let c = &tb.clients[0];
    let profile = tb.client_profile("alice", &[], 0);
    {
        let gw = tb.start_gateway(&config);
        for transport in ["udp", "tcp-client"] {
            let mut client = openvpn(
                &tb,
                &gw,
                0,
                &profile,
                &[
                    "--tls-version-max",
                    "1.2",
                    "--proto",
                    transport,
                    "--verb",
                    "4",
                ],
            );
            assert!(
                client.output().contains("Control Channel: TLSv1.2"),
                "{}",
                client.output()
            );
            transfers_both_ways_from_eni(&tb, c, 5001, (21, 22));
            client.stop();
        }
    }
    // With min_version 1.3 the same client is refused, logged as a TLS
    // version mismatch (not as an attempt without a certificate).
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[tls]\n", "[tls]\nmin_version = \"1.3\"\n");
    std::fs::write(&config, text).unwrap();
    let gw = tb.start_gateway(&config);
    let mut client = spawn_openvpn(&tb, 0, &profile, &["--tls-version-max", "1.2"]);
    let refused = wait_log(&tb, 20, |r| {
        r["connection-attempt-failure-reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("tls_version:"))
    });
    client.stop();
    assert!(refused, "{:?}\n{}", failures(&tb), gw.output());
    assert!(
        !failures(&tb)
            .iter()
            .any(|(_, r)| r.contains("without a client certificate")),
        "{:?}",
        failures(&tb)
    );
    let metrics = cvpn_e2e::ok(
        std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
            .args(["connections", "--json", "--control"])
            .arg(tb.control_socket()),
    );
    assert!(!metrics.is_empty());
}

#[test]
fn a_client_without_a_shared_cipher_is_told_why_and_stops() {
    let tb = Testbed::new("ovpn-cbc", 1);
    let config = tb.write_config(UDP, ALL_USERS);
    let gw = tb.start_gateway(&config);
    let profile = tb.client_profile("bob", &[], 0);
    for transport in ["udp", "tcp-client"] {
        let t0 = Instant::now();
        let mut client = spawn_openvpn(
            &tb,
            0,
            &profile,
            &["--data-ciphers", "AES-256-CBC", "--proto", transport],
        );
        // It exits on the AUTH_FAILED instead of looping on "TLS key
        // negotiation failed".
        assert!(
            client.wait(20).is_some(),
            "{}\n{}",
            client.output(),
            gw.output()
        );
        let out = client.output();
        assert!(
            out.contains("AUTH_FAILED,no shared data cipher") && out.contains("CBC"),
            "{out}"
        );
        assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    }
    let f = failures(&tb);
    assert_eq!(
        f.iter()
            .filter(|(cn, r)| cn == "bob" && r.contains("no shared data cipher"))
            .count(),
        2,
        "{f:?}"
    );
}

#[test]
fn a_full_endpoint_refuses_with_temp_and_the_client_gets_in_later() {
    let tb = Testbed::new("ovpn-full", 2);
    let config = tb.write_config(&format!("{UDP}\nmax_connections = 1"), ALL_USERS);
    let gw = tb.start_gateway(&config);
    let first = tb.client_profile("carol", &[], 0);
    let second = tb.client_profile("dave", &[], 1);
    let mut a = openvpn(&tb, &gw, 0, &first, &[]);
    let mut b = spawn_openvpn(&tb, 1, &second, &[]);
    b.wait_for(
        "AUTH_FAILED,TEMP[backoff 10,advance remote]:the endpoint is at max_connections (1)",
        20,
    );
    // A temporary refusal: the client retries rather than stopping.
    assert!(b.wait(3).is_none(), "{}", b.output());
    a.stop();
    wait_connected(&b, &gw, 40);
    sh_ok(&tb.clients[1], &format!("ping -c 1 -W 3 {TARGET}"));
    let f = failures(&tb);
    assert!(
        f.iter()
            .any(|(cn, r)| cn == "dave" && r.contains("max_connections")),
        "{f:?}"
    );
    b.stop();
}

#[test]
fn a_client_restarted_on_the_same_source_port_gets_in_and_ends_the_old_session() {
    let tb = Testbed::new("ovpn-lport", 1);
    let config = tb.write_config(UDP, ALL_USERS);
    let gw = tb.start_gateway(&config);
    let port = ["--bind", "--lport", "41194"];
    let erin = tb.client_profile("erin", &[], 0);
    let mut old = openvpn(&tb, &gw, 0, &erin, &port);
    // Killed: no exit notification; the gateway still has its session.
    old.signal("KILL");
    old.wait(5);
    assert_eq!(tb.connections()["connections"].as_array().unwrap().len(), 1);
    // Another certificate from the same address and port (a restarted
    // laptop, or a carrier NAT reusing the port).
    let frank = tb.client_profile("frank", &[], 0);
    let t0 = Instant::now();
    let mut new = spawn_openvpn(&tb, 0, &frank, &port);
    wait_connected(&new, &gw, 20);
    let took = t0.elapsed();
    sh_ok(&tb.clients[0], &format!("ping -c 1 -W 3 {TARGET}"));
    let v = tb.connections();
    let names: Vec<_> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["common-name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["frank"], "{v}");
    assert!(
        wait_log(&tb, 5, |r| r["common-name"] == "erin"
            && r["connection-reset-reason"]
                == "replaced by a new session from the same address"),
        "{:?}",
        connection_log(&tb)
    );
    println!("same-port restart connected in {took:?}");
    new.stop();
}

#[test]
fn a_reset_flood_from_a_clients_address_does_not_keep_it_out() {
    let tb = Testbed::new("ovpn-flood", 1);
    let config = tb.write_config(UDP, ALL_USERS);
    let gw = tb.start_gateway(&config);
    let c = &tb.clients[0];
    let mut flood = cvpn_e2e::netns::Proc::spawn("reset flood", {
        let mut cmd = cvpn_e2e::netns::in_ns(c, &tb.helper());
        cmd.args(["reset-flood", "--to", "198.18.0.1:443"]);
        cmd.args(["--rate", "1000", "--seconds", "30"]);
        cmd
    });
    // Past the source's burst before the client starts.
    std::thread::sleep(Duration::from_secs(2));
    let profile = tb.client_profile("grace", &[], 0);
    let t0 = Instant::now();
    let client = spawn_openvpn(&tb, 0, &profile, &[]);
    wait_connected(&client, &gw, 20);
    let took = t0.elapsed();
    println!("connected in {took:?} while 1000 resets/s came from its address");
    assert!(took < Duration::from_secs(10), "{took:?}");
    flood.wait_for("reset flood done", 40);
}

#[test]
fn the_server_renegotiates_for_clients_that_never_do() {
    let tb = Testbed::new("ovpn-srvreneg", 1);
    let config = tb.write_config(UDP, ALL_USERS);
    let c = &tb.clients[0];
    let profile = tb.client_profile("hank", &[], 0);
    // A key wears out after 3000 packets: a 20 MB download takes about
    // 14,000, so several keys, while the client itself never renegotiates.
    {
        let gw = tb.start_gateway_with_env(&config, &[("CVPN_OPENVPN_KEY_PACKETS", "3000")]);
        let mut client = openvpn(&tb, &gw, 0, &profile, &["--reneg-sec", "0", "--verb", "4"]);
        let (fetched, _) = tb.transfer(c, 5001, 31, false);
        assert!(fetched.contains("ok 20000000 bytes"), "{fetched}");
        let keys = client.output().matches("Control Channel: TLS").count();
        assert!(keys >= 3, "{keys} keys\n{}", client.output());
        client.stop();
    }
    // reneg_seconds = 10 renegotiates a reneg-sec 0 client every 10 s.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[tls]\n", "[tls]\nreneg_seconds = 10\n");
    std::fs::write(&config, text).unwrap();
    let gw = tb.start_gateway(&config);
    let mut client = openvpn(&tb, &gw, 0, &profile, &["--reneg-sec", "0", "--verb", "4"]);
    let (received, out) = pings_answered(c, TARGET, 130);
    let keys = client.output().matches("Control Channel: TLS").count();
    assert!(keys >= 3, "{keys} keys\n{}", client.output());

    assert!(received >= 128, "{out}\n{}", client.output());
    client.stop();
}

#[test]
fn clients_that_close_their_tls_session_end_and_stall_nothing() {
    let tb = Testbed::new("ovpn-close", 1);
    let config = tb.write_config("", ALL_USERS);
    let gw = tb.start_gateway(&config);
    let c = &tb.clients[0];
    // More such clients than the gateway has worker threads (2 cores).
    let crafted: Vec<cvpn_e2e::netns::Proc> = (0..4)
        .map(|i| {
            let name = format!("mallory{i}");
            tb.pki.ok(&["issue", "client", &name]);
            let mut cmd = cvpn_e2e::netns::in_ns(c, &cvpn_e2e::bin("cvpn-e2e-ovpn"));
            cmd.args([
                "close-notify",
                "--connect",
                "198.18.0.1:443",
                "--hold",
                "10",
            ]);
            cmd.arg("--ca").arg(tb.pki.path("ca.crt"));
            cmd.arg("--cert").arg(tb.pki.cert(&name));
            cmd.arg("--key").arg(tb.pki.key(&name));
            cvpn_e2e::netns::Proc::spawn(&name, cmd)
        })
        .collect();
    for mut p in crafted {
        let out = p.wait_for("gateway closed the connection", 8);
        assert!(out.contains("authenticated"), "{out}");
    }
    // The gateway still serves: a stock client gets in at once.
    let profile = tb.client_profile("judy", &[], 0);
    let t0 = Instant::now();
    let mut client = openvpn(&tb, &gw, 0, &profile, &[]);
    let took = t0.elapsed();
    println!("a stock client connected {took:?} after the crafted ones");
    assert!(took < Duration::from_secs(5), "{took:?}");
    sh_ok(c, &format!("ping -c 1 -W 3 {TARGET}"));
    client.stop();
    let log = connection_log(&tb);
    for i in 0..4 {
        let name = format!("mallory{i}");
        assert!(
            log.iter().any(|r| r["common-name"] == name.as_str()
                && r["connection-reset-reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("close_notify"))),
            "{name}: {log:?}"
        );
    }
}

#[test]
fn syns_through_the_tunnel_are_clamped_for_clients_without_mssfix() {
    let tb = Testbed::new("ovpn-mss", 1);
    let config = tb.write_config(UDP, ALL_USERS);
    let gw = tb.start_gateway(&config);
    let profile = tb.client_profile("kim", &[], 0);
    let mut client = openvpn(&tb, &gw, 0, &profile, &["--mssfix", "0"]);
    let (fetched, seen) = tb.transfer(&tb.clients[0], 5001, 51, false);
    assert!(fetched.contains("ok 20000000 bytes"), "{fetched}");
    let mss: u32 = seen
        .lines()
        .find_map(|l| l.strip_prefix("mss=")?.parse().ok())
        .unwrap_or_else(|| panic!("no mss in {seen}"));
    // The target sends segments that fit the tunnel once encapsulated
    // (1385 announced, less TCP timestamps).
    assert!(mss <= 1385, "{mss}");
    client.stop();
}
