//! Stock OpenVPN clients (Debian's openvpn 2.6) against the endpoint, in
//! namespaces, with the profile exactly as `export-profile` writes it.

use std::path::Path;

use cvpn_e2e::checks::{
    connection_log, denied, ping, pings_answered, transfers_both_ways_from_eni,
};
use cvpn_e2e::netns::{Proc, in_ns, sh_ok};
use cvpn_e2e::openvpn::{address_of, openvpn, routes_via};
use cvpn_e2e::testbed::{TARGET, Testbed};

const ALL_USERS: &str = r#"
[[authorization_rules]]
destination = "0.0.0.0/0"
"#;

#[test]
fn openvpn_over_tcp_gets_an_address_routes_and_the_target() {
    let tb = Testbed::new("ovpn-tcp", 1);
    // DNS servers come with block-outside-dns, which clients off Windows
    // take and ignore.
    let config = tb.write_config("dns_servers = [\"192.168.1.53\"]", ALL_USERS);
    let gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &["eng"], 0);
    let c = &tb.clients[0];
    let mut client = openvpn(&tb, &gw, 0, &profile, &[]);
    let addr = address_of(c, "tun0");
    assert!(addr.starts_with("10.250.0."), "{addr}\n{}", client.output());
    assert_eq!(
        routes_via(c, "tun0"),
        [
            "10.20.0.0/16 via 10.250.0.1 dev tun0",
            "192.168.1.0/24 via 10.250.0.1 dev tun0"
        ]
    );
    sh_ok(c, &format!("ping -c 2 -W 3 {TARGET}"));
    transfers_both_ways_from_eni(&tb, c, 5001, (7, 9));
    let v = tb.connections();
    let s = &v["connections"][0];
    assert_eq!(s["protocol"], "openvpn", "{v}");
    assert_eq!(s["transport-protocol"], "tcp", "{v}");
    assert_eq!(
        s["client-ip"].as_str(),
        Some(addr.split('/').next().unwrap())
    );
    client.stop();
}

#[test]
fn openvpn_over_udp_full_tunnel() {
    let tb = Testbed::new("ovpn-udp", 1);
    let config = tb.write_config(
        "transport_protocol = \"udp\"\nsplit_tunnel = false",
        ALL_USERS,
    );
    let gw = tb.start_gateway(&config);
    let profile = tb.client_profile("bob", &[], 0);
    assert!(
        std::fs::read_to_string(&profile)
            .unwrap()
            .contains("proto udp")
    );
    let c = &tb.clients[0];
    let mut client = openvpn(&tb, &gw, 0, &profile, &[]);
    let addr = address_of(c, "tun0");
    assert!(addr.starts_with("10.250.0."), "{addr}");
    // Full tunnel: the default goes through the tunnel (def1), the
    // gateway itself around it.
    let routes = routes_via(c, "tun0");
    assert_eq!(
        routes,
        [
            "0.0.0.0/1 via 10.250.0.1 dev tun0",
            "128.0.0.0/1 via 10.250.0.1 dev tun0"
        ],
        "{routes:?}"
    );
    // IPv6 goes into the tunnel too, where the client blocks it: nothing
    // leaves in clear beside the IPv4-only tunnel.
    let v6 = sh_ok(c, "ip -6 route get 2001:db8::1 2>&1 || true");
    assert!(v6.contains("dev tun0"), "{v6}\n{}", client.output());
    let ping6 = cvpn_e2e::netns::sh(c, "ping -6 -n -c 1 -W 2 2001:db8::1 2>&1");
    assert!(!ping6.status.success());
    sh_ok(c, &format!("ping -c 2 -W 3 {TARGET}"));
    transfers_both_ways_from_eni(&tb, c, 5001, (3, 4));
    let v = tb.connections();
    assert_eq!(v["connections"][0]["transport-protocol"], "udp", "{v}");
    client.stop();
}

const GROUPS_AND_LOCAL: &str = r#"
[[routes]]
destination = "10.250.0.0/22"
target = "local"

[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "eng"

[[authorization_rules]]
destination = "10.250.0.0/22"
"#;

#[test]
fn openvpn_and_cvpn_clients_share_the_pool_the_policy_and_each_other() {
    let tb = Testbed::new("ovpn-mix", 2);
    let flows = tb.path("flows.jsonl");
    let config = tb.write_config(
        &format!("flow_log = \"{}\"", flows.display()),
        GROUPS_AND_LOCAL,
    );
    let gw = tb.start_gateway(&config);
    let alice = tb.client_profile("alice", &["eng"], 0);
    let bob = tb.client_profile("bob", &[], 1);
    let _ovpn = openvpn(&tb, &gw, 0, &alice, &[]);
    let _cvpn = tb.connect(1, &bob);
    let (a, b) = (&tb.clients[0], &tb.clients[1]);
    let addrs = tb.addresses();
    let (alice_ip, bob_ip) = (&addrs["alice"], &addrs["bob"]);
    assert_ne!(alice_ip, bob_ip);
    assert_eq!(address_of(a, "tun0"), format!("{alice_ip}/22"));

    // By group: eng reaches the target, bob does not; nobody reaches the
    // routed network without a rule. Both kinds are refused alike.
    assert!(ping(a, TARGET).0, "{}", ping(a, TARGET).1);
    denied(b, TARGET);
    denied(a, cvpn_e2e::testbed::PEERED);

    // Client to client, through the gateway process, both ways.
    assert!(ping(a, bob_ip).0, "{}", ping(a, bob_ip).1);
    assert!(ping(b, alice_ip).0, "{}", ping(b, alice_ip).1);

    let v = tb.connections();
    let mut kinds: Vec<_> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["protocol"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["cvpn", "openvpn"], "{v}");

    // The flow log names the OpenVPN user behind the ping to the target;
    // refused packets and client-to-client traffic never became flows.
    let text = std::fs::read_to_string(&flows).unwrap_or_default();
    let starts: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["flow-log-type"] == "flow-start")
        .collect();
    assert!(
        starts.iter().any(|l| l["common-name"] == "alice"
            && l["pkt-srcaddr"] == alice_ip.as_str()
            && l["dstaddr"] == TARGET
            && l["protocol"] == 1
            && l["target-network"] == "tn-a"),
        "{text}"
    );
    assert!(
        starts
            .iter()
            .all(|l| l["common-name"] == "alice" && l["dstaddr"] == TARGET),
        "{text}"
    );
}

#[test]
fn revoking_or_terminating_an_openvpn_client_ends_it() {
    let tb = Testbed::new("ovpn-revoke", 2);
    let config = tb.write_config("transport_protocol = \"udp\"", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    let carol = tb.client_profile("carol", &[], 0);
    let mut client = openvpn(&tb, &gw, 0, &carol, &[]);
    let t0 = std::time::Instant::now();
    tb.pki.ok(&["revoke", "carol"]);
    gw.wait_for("certificate revoked: ending session", 5);
    assert!(client.wait(5).is_some(), "{}", client.output());
    // The CRL is looked at every 0.5 s: within 2 s of the revocation.
    assert!(t0.elapsed().as_secs_f64() < 2.5, "{:?}", t0.elapsed());
    assert!(
        client
            .output()
            .contains("Halt command was pushed by server"),
        "{}",
        client.output()
    );
    assert_eq!(tb.connections()["connections"].as_array().unwrap().len(), 0);

    // Its reconnect is refused, by name.
    let mut cmd = in_ns(&tb.clients[0], Path::new("openvpn"));
    cmd.arg("--config")
        .arg(&carol)
        .args(["--connect-retry-max", "1"]);
    let mut again = Proc::spawn("openvpn again", cmd);
    gw.wait_for("common_name=carol reason=TLS handshake failed", 15);
    again.stop();

    // terminate ends a client over TCP beside it (the profile says udp;
    // the same port takes TCP).
    let dave = tb.client_profile("dave", &[], 1);
    let mut tcp = openvpn(&tb, &gw, 1, &dave, &["--proto", "tcp-client"]);
    let out = cvpn_e2e::ok(
        std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
            .args(["terminate", "--cn", "dave", "--control"])
            .arg(tb.control_socket()),
    );
    assert!(out.contains("terminated cvpn-conn-"), "{out}");
    assert!(tcp.wait(5).is_some(), "{}", tcp.output());

    let log = connection_log(&tb);
    let of = |cn: &str, kind: &str| {
        log.iter()
            .find(|r| r["common-name"] == cn && r["connection-log-type"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} of {cn}: {log:?}"))
    };
    let started = of("carol", "connection-attempt");
    assert_eq!(started["transport-protocol"], "udp");
    assert_eq!(started["connection-attempt-status"], "successful");
    let ended = of("carol", "connection-reset");
    assert_eq!(ended["connection-reset-reason"], "certificate revoked");
    assert_eq!(ended["transport-protocol"], "udp");
    assert!(
        log.iter()
            .any(|r| r["common-name"] == "carol" && r["connection-attempt-status"] == "failed")
    );
    let ended = of("dave", "connection-reset");
    assert_eq!(ended["transport-protocol"], "tcp");
    assert_eq!(
        ended["connection-reset-reason"],
        "terminated by the administrator"
    );
    for key in [
        "ingress-bytes",
        "egress-packets",
        "connection-duration-seconds",
        "client-ip",
    ] {
        assert_ne!(ended[key], "NA", "{key}: {ended}");
    }
}

#[test]
fn renegotiations_keep_the_tunnel_up() {
    let tb = Testbed::new("ovpn-reneg", 1);
    let config = tb.write_config("transport_protocol = \"udp\"", ALL_USERS);
    let gw = tb.start_gateway(&config);
    let profile = tb.client_profile("erin", &[], 0);
    let c = &tb.clients[0];
    for proto in ["udp", "tcp-client"] {
        let args = ["--reneg-sec", "10", "--verb", "4", "--proto", proto];
        let mut client = openvpn(&tb, &gw, 0, &profile, &args);
        // 125 pings 0.2 s apart: 25 s, two renegotiations.
        let (received, out) = pings_answered(c, TARGET, 125);
        let renegotiated = client.output().matches("Control Channel: TLSv1.3").count() - 1;
        assert!(
            renegotiated >= 2,
            "{proto}: {renegotiated}\n{}",
            client.output()
        );

        assert!(received >= 124, "{proto}: {out}\n{}", client.output());
        client.stop();
    }
}

/// Sends an OpenVPN client reset without tls-crypt to the gateway over
/// UDP from client `i`; returns how many bytes came back within 2 s.
fn bytes_back_for_a_bare_reset(tb: &Testbed, i: usize) -> usize {
    // Opcode 7 (hard reset client v2), key id 0, a session id, no acks,
    // message id 0.
    let reset = r"\x38\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x00\x00\x00";
    let out = sh_ok(
        &tb.clients[i],
        &format!(
            "bash -c \"exec 3<>/dev/udp/198.18.{i}.1/443; printf '{reset}' >&3; \
             timeout 2 cat <&3 | wc -c\""
        ),
    );
    out.trim().parse().expect("a count")
}

#[test]
fn tls_crypt_answers_only_clients_with_the_key() {
    let tb = Testbed::new("ovpn-tc", 2);
    let config = tb.write_config("transport_protocol = \"udp\"", ALL_USERS);
    // Without tls-crypt a bare reset gets the stateless answer (26 bytes)...
    {
        let _gw = tb.start_gateway(&config);
        assert_eq!(bytes_back_for_a_bare_reset(&tb, 0), 26);
    }
    // ... with it, nothing at all.
    let key = tb.path("tc.key");
    cvpn_e2e::ok(
        std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
            .args(["tls-crypt-key", "--out"])
            .arg(&key),
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[tls]\n",
        &format!("[tls]\ntls_crypt = \"{}\"\n", key.display()),
    );
    std::fs::write(&config, text).unwrap();
    let gw = tb.start_gateway(&config);
    assert_eq!(bytes_back_for_a_bare_reset(&tb, 0), 0);

    // The exported profile carries the key: openvpn connects over UDP and
    // TCP, and cvpn-client takes the same file.
    let profile = tb.client_profile("frank", &[], 0);
    assert!(
        std::fs::read_to_string(&profile)
            .unwrap()
            .contains("<tls-crypt>")
    );
    let c = &tb.clients[0];
    let mut client = openvpn(&tb, &gw, 0, &profile, &[]);
    sh_ok(c, &format!("ping -c 2 -W 3 {TARGET}"));
    client.stop();
    let mut tcp = openvpn(&tb, &gw, 0, &profile, &["--proto", "tcp-client"]);
    sh_ok(c, &format!("ping -c 2 -W 3 {TARGET}"));
    tcp.stop();
    let grace = tb.client_profile("grace", &[], 1);
    let cvpn = tb.connect(1, &grace);
    assert!(!cvpn.output().contains("tls-crypt"), "{}", cvpn.output());
    sh_ok(&tb.clients[1], &format!("ping -c 2 -W 3 {TARGET}"));
}

#[test]
fn profiles_with_compression_framing_still_work_uncompressed() {
    let tb = Testbed::new("ovpn-comp", 1);
    let config = tb.write_config("transport_protocol = \"udp\"", ALL_USERS);
    let gw = tb.start_gateway(&config);
    let profile = tb.client_profile("hank", &[], 0);
    let c = &tb.clients[0];
    for extra in [&["--comp-lzo", "no"][..], &["--compress"][..]] {
        let mut client = openvpn(&tb, &gw, 0, &profile, extra);
        let (ok, out) = ping(c, TARGET);
        assert!(
            ok,
            "{extra:?}: {out}\n{}\n{}\n{}",
            client.output(),
            gw.output(),
            tb.connections()
        );
        let (fetched, _) = tb.transfer(c, 5001, 11, false);
        assert!(
            fetched.contains("ok 20000000 bytes"),
            "{extra:?}: {fetched}"
        );
        client.stop();
    }
    let drops = &tb.connections()["drops"];
    assert_eq!(drops["malformed"], 0, "{drops}\n{}", gw.output());
}
