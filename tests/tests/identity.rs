//! Who may connect: mutual TLS against the endpoint's CA and CRL, checked
//! by the gateway (which logs why it refuses) and by the client (which
//! refuses a gateway with the wrong name). Revocation ends live sessions.

use cvpn_e2e::checks::connection_log;
use cvpn_e2e::netns::sh;
use cvpn_e2e::testbed::Testbed;
use cvpn_e2e::{Pki, ok};

const ALL_USERS: &str = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";

fn profile_text(ca: &str, cert: &str, key: &str, server_name: &str) -> String {
    format!(
        "client\ndev tun\nproto tcp\nremote 198.18.0.1 443\nverify-x509-name {server_name} name\n<ca>\n{ca}</ca>\n<cert>\n{cert}</cert>\n<key>\n{key}</key>\n"
    )
}

/// Runs the client once; it must fail. Returns its output.
fn refused(tb: &Testbed, profile: &std::path::Path) -> String {
    let mut client = tb.spawn_client(0, profile);
    let code = client.wait(30).expect("client did not give up");
    assert_ne!(code, 0, "client connected: {}", client.output());
    client.output()
}

#[test]
fn refused_clients_and_gateways() {
    let tb = Testbed::new("ident", 1);
    let config = tb.write_config("", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    let ca = tb.pki.read("ca.crt");

    // No client certificate at all.
    sh(
        &tb.clients[0],
        &format!(
            "echo | timeout 10 openssl s_client -connect 198.18.0.1:443 -tls1_3 -alpn cvpn/1 -CAfile {} 2>&1",
            tb.pki.path("ca.crt").display()
        ),
    );
    // Attempts without a certificate are logged once per interval (10 s).
    gw.wait_for("peer sent no certificates", 15);

    // A certificate of another CA.
    let other = Pki::new(&["--cn", "Other CA"]);
    other.ok(&["issue", "client", "mallory"]);
    let p = tb.path("other-ca.ovpnx");
    std::fs::write(
        &p,
        profile_text(
            &ca,
            &other.read("issued/mallory.crt"),
            &other.read("private/mallory.key"),
            "vpn.example.com",
        ),
    )
    .unwrap();
    let out = refused(&tb, &p);
    assert!(
        out.contains("refused by the endpoint: received fatal alert: UnknownCA"),
        "{out}"
    );
    gw.wait_for("UnknownIssuer", 10);

    // A revoked certificate.
    let bob = tb.client_profile("bob", &[], 0);
    tb.pki.ok(&["revoke", "bob"]);
    gw.wait_for("CRL reloaded", 10);
    let out = refused(&tb, &bob);
    assert!(
        out.contains("refused by the endpoint: received fatal alert: CertificateRevoked"),
        "{out}"
    );
    gw.wait_for("Revoked", 10);

    // A gateway whose certificate does not carry the expected name.
    tb.pki.ok(&["issue", "client", "alice"]);
    let p = tb.path("wrong-name.ovpnx");
    std::fs::write(
        &p,
        profile_text(
            &ca,
            &tb.pki.read("issued/alice.crt"),
            &tb.pki.read("private/alice.key"),
            "other.example.com",
        ),
    )
    .unwrap();
    let out = refused(&tb, &p);
    assert!(out.contains("not valid for name"), "{out}");

    // The connection log names each refusal.
    let log = connection_log(&tb);
    let reasons: Vec<String> = log
        .iter()
        .filter(|r| r["connection-attempt-status"] == "failed")
        .map(|r| {
            r["connection-attempt-failure-reason"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    for needle in ["peer sent no certificates", "UnknownIssuer", "Revoked"] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{needle} not in {reasons:?}"
        );
    }
    // And nothing was admitted.
    assert!(
        !log.iter()
            .any(|r| r["connection-attempt-status"] == "successful"),
        "{log:?}"
    );
}

#[test]
fn revocation_ends_a_live_session() {
    let tb = Testbed::new("revoke", 1);
    let config = tb.write_config("", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    let profile = tb.client_profile("carol", &[], 0);
    let mut client = tb.connect(0, &profile);
    tb.pki.ok(&["revoke", "carol"]);
    gw.wait_for("certificate revoked: ending session", 10);
    assert!(
        client.wait(10).is_some(),
        "client still running: {}",
        client.output()
    );
    assert!(
        client.output().contains("certificate revoked"),
        "{}",
        client.output()
    );
    let log = connection_log(&tb);
    let ended = log
        .iter()
        .find(|r| r["connection-log-type"] == "connection-reset")
        .expect("reset record");
    assert_eq!(ended["common-name"], "carol");
    assert_eq!(ended["connection-reset-reason"], "certificate revoked");
    for key in [
        "ingress-bytes",
        "egress-bytes",
        "ingress-packets",
        "egress-packets",
        "connection-duration-seconds",
    ] {
        assert!(
            ended[key]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .is_some(),
            "{key}: {ended}"
        );
    }
}

#[test]
fn terminate_by_common_name() {
    let tb = Testbed::new("term", 1);
    let config = tb.write_config("", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    let profile = tb.client_profile("dave", &[], 0);
    let mut client = tb.connect(0, &profile);
    let gw_bin = cvpn_e2e::bin("cvpn-gw");
    let list = ok(std::process::Command::new(&gw_bin)
        .args(["connections", "--control"])
        .arg(tb.control_socket()));
    assert!(list.contains("dave"), "{list}");
    let out = ok(std::process::Command::new(&gw_bin)
        .args(["terminate", "--cn", "dave", "--control"])
        .arg(tb.control_socket()));
    assert!(out.contains("terminated cvpn-conn-"), "{out}");
    assert!(client.wait(10).is_some());
    assert!(
        client.output().contains("terminated by the administrator"),
        "{}",
        client.output()
    );
}
