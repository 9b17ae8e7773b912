//! OpenVPN 3 core (the engine of OpenVPN Connect) as a client, built with
//! OpenSSL and with mbed TLS (TLS 1.2 only) by
//! `../shared/peers/openvpn3/build.sh`, over UDP and TCP, with the profile
//! `export-profile` writes, named `.ovpn` as OpenVPN 3 insists: each gets
//! an address and the routes, moves 20 MB both ways seen from the ENI
//! address, and keeps its tunnel across the server's renegotiation every
//! 10 s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cvpn_e2e::checks::{pings_answered, transfers_both_ways_from_eni};
use cvpn_e2e::netns::{Proc, in_ns, sh_ok};
use cvpn_e2e::openvpn::{address_of, routes_via};
use cvpn_e2e::testbed::{TARGET, Testbed};

const CONFIG: &str = r#"
[[authorization_rules]]
destination = "0.0.0.0/0"
"#;

/// Where build.sh leaves the clients (CVPN_PEERS overrides it).
fn peer(name: &str) -> PathBuf {
    let dir = std::env::var("CVPN_PEERS").unwrap_or_else(|_| "/var/cache/cvpn-peers".into());
    let path = Path::new(&dir).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `bash ../shared/peers/openvpn3/build.sh` first (.ci/run does)",
        path.display()
    );
    path
}

/// Starts `ovpncli PROFILE --proto PROTO` in client `i` and waits until it
/// says CONNECTED.
fn ovpncli(tb: &Testbed, gw: &Proc, bin: &Path, profile: &Path, proto: &str) -> Proc {
    let mut cmd = in_ns(&tb.clients[0], bin);
    // reneg-sec 10 on the client's side too: OpenVPN 3 moves its data to
    // a new key only after min(hand-window, reneg-sec / 2).
    cmd.args(["--proto", proto])
        .arg(profile)
        .arg("reneg-sec 10");
    let p = Proc::spawn(&format!("{} {proto}", bin.display()), cmd);
    for _ in 0..300 {
        if p.output().contains("EVENT: CONNECTED") {
            return p;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} {proto} not connected within 30 s:\n{}\ngateway:\n{}",
        bin.display(),
        p.output(),
        gw.output()
    );
}

/// The tun device the client made (the only link besides lo and c0).
fn tun_device(ns: &str) -> String {
    sh_ok(ns, "ip -o link show")
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .find(|n| n != "lo" && n != "c0")
        .unwrap_or_default()
}

fn matrix(client_name: &str, tag: &str) {
    let bin = peer(client_name);
    let tb = Testbed::new(tag, 1);
    let config = tb.write_config("transport_protocol = \"udp\"\n", CONFIG);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[tls]\n", "[tls]\nreneg_seconds = 10\n");
    std::fs::write(&config, text).unwrap();
    let gw = tb.start_gateway(&config);
    let exported = tb.client_profile("alice", &[], 0);
    let text = std::fs::read_to_string(&exported).unwrap();
    assert!(text.contains("\nproto udp\n"), "{text}");
    let c = &tb.clients[0];
    for proto in ["udp", "tcp"] {
        // The file as exported, named .ovpn; over TCP with the proto
        // line an endpoint with transport_protocol = "tcp" writes.
        let profile = tb.path(&format!("alice-{proto}.ovpn"));
        std::fs::write(
            &profile,
            text.replace("\nproto udp\n", &format!("\nproto {proto}\n")),
        )
        .unwrap();
        let mut client = ovpncli(&tb, &gw, &bin, &profile, proto);
        let dev = tun_device(c);
        let addr = address_of(c, &dev);
        assert!(addr.starts_with("10.250.0."), "{addr}\n{}", client.output());
        let routes = routes_via(c, &dev);
        assert!(
            routes.iter().any(|r| r.starts_with("192.168.1.0/24"))
                && routes.iter().any(|r| r.starts_with("10.20.0.0/16")),
            "{routes:?}"
        );
        transfers_both_ways_from_eni(&tb, c, 5001, (41, 42));
        // 25 s of pings 0.2 s apart: two renegotiations or more.
        let (received, out) = pings_answered(c, TARGET, 125);

        assert!(received >= 123, "{proto}: {out}\n{}", client.output());
        let out = client.output();
        let handshakes: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("TLS Handshake: "))
            // OpenSSL: "... cipher: ... TLSv1.3 Kx=..."; mbed TLS:
            // "TLS Handshake: TLSv1.2/TLS-ECDHE-...".
            .map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.starts_with("TLSv").then(|| w.get(..7).unwrap_or(w)))
                    .unwrap_or("?")
            })
            .collect();
        // One per key: the first and at least two renegotiations.
        assert!(handshakes.len() >= 3, "{handshakes:?}\n{out}");
        if client_name.ends_with("mbedtls") {
            assert!(handshakes.iter().all(|v| *v == "TLSv1.2"), "{handshakes:?}");
        }
        println!("{client_name} {proto}: handshakes {handshakes:?}");
        let v = tb.connections();
        let s = &v["connections"][0];
        assert_eq!(s["protocol"], "openvpn", "{v}");
        assert_eq!(s["transport-protocol"], proto, "{v}\n{}", client.output());
        client.stop();
    }
}

#[test]
fn openvpn3_with_openssl_over_udp_and_tcp() {
    matrix("ovpncli", "ov3-ssl");
}

#[test]
fn openvpn3_with_mbedtls_over_udp_and_tcp() {
    matrix("ovpncli-mbedtls", "ov3-mbed");
}
