//! A careless or hostile peer loses its own connection, never the gateway:
//! no ALPN, garbage frames, a packet before the hello. A well-behaved
//! client is served throughout. And a client reconnects by itself after
//! the gateway restarts.

use cvpn_e2e::netns::sh;
use cvpn_e2e::testbed::{TARGET, Testbed};

const ALL_USERS: &str = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";

/// Sends `bytes` (printf syntax) over a mutual-TLS connection made by
/// openssl with alice's certificate; `alpn` adds `-alpn cvpn/1`.
fn raw_tls(tb: &Testbed, bytes: &str, alpn: bool) {
    let p = &tb.pki;
    let script = format!(
        "(printf '{bytes}'; sleep 1) | timeout 10 openssl s_client -quiet -connect 198.18.0.1:443 -tls1_3 {alpn} \
         -cert {cert} -key {key} -CAfile {ca} >/dev/null 2>&1",
        alpn = if alpn { "-alpn cvpn/1" } else { "" },
        cert = p.cert("alice").display(),
        key = p.key("alice").display(),
        ca = p.path("ca.crt").display(),
    );
    sh(&tb.clients[0], &script);
}

#[test]
fn hostile_peers_lose_only_their_own_connection() {
    let tb = Testbed::new("hostile", 1);
    let config = tb.write_config("", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &[], 0);

    raw_tls(&tb, "", false);
    gw.wait_for("did not negotiate ALPN cvpn/1", 10);
    // An unknown frame type as the first bytes.
    raw_tls(&tb, "\\011\\000\\000\\024", true);
    gw.wait_for("bad hello: unknown frame type 9", 10);
    // A packet frame before the hello.
    raw_tls(
        &tb,
        "\\001\\000\\000\\036AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        true,
    );
    gw.wait_for("bad hello: packet before hello", 10);
    // A hello, then a frame with a hostile length.
    raw_tls(
        &tb,
        "\\002\\000\\000\\062{\"type\":\"hello\",\"version\":1,\"os\":\"x\",\"client\":\"y\"}\\002\\000\\377\\377",
        true,
    );
    gw.wait_for(
        "malformed frame from client: control frame of 65535 bytes",
        10,
    );

    // The gateway still serves a real client.
    let _client = tb.connect(0, &profile);
    let out = sh(&tb.clients[0], &format!("ping -c 1 -W 3 {TARGET}"));
    assert!(out.status.success());
}

#[test]
fn client_reconnects_after_the_gateway_restarts() {
    let tb = Testbed::new("reconn", 1);
    let config = tb.write_config("", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &[], 0);
    // Without --once: the client keeps the user connected.
    let mut client = tb.connect_persistent(0, &profile);
    assert_eq!(gw.stop(), 0);
    client.wait_for("endpoint shutting down", 20);
    let before = client.output().matches("connected to").count();
    let _gw = tb.start_gateway(&config);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while client.output().matches("connected to").count() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no reconnection: {}",
            client.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = sh(&tb.clients[0], &format!("ping -c 1 -W 3 {TARGET}"));
    assert!(out.status.success(), "{}", client.output());
    assert_eq!(client.stop(), 0);
}
