//! Stock OpenVPN clients (Debian's openvpn 2.6) against the endpoint, in
//! namespaces, with the profile exactly as `export-profile` writes it.

use std::path::Path;

use cvpn_e2e::netns::{Proc, in_ns, sh_ok};
use cvpn_e2e::testbed::{ENI, TARGET, Testbed};

const ALL_USERS: &str = r#"
[[authorization_rules]]
destination = "0.0.0.0/0"
"#;

/// Starts `openvpn --config PROFILE` in client `i` and waits until its
/// tunnel is up; on failure, says what the client and the gateway printed.
fn openvpn(tb: &Testbed, gw: &Proc, i: usize, profile: &Path, extra: &[&str]) -> Proc {
    let mut cmd = in_ns(&tb.clients[i], Path::new("openvpn"));
    cmd.arg("--config").arg(profile).args(extra);
    let p = Proc::spawn(&format!("openvpn {i}"), cmd);
    for _ in 0..300 {
        if p.output().contains("Initialization Sequence Completed") {
            return p;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "openvpn {i} not connected within 30 s:\n{}\ngateway:\n{}",
        p.output(),
        gw.output()
    );
}

/// The IPv4 address of `dev` in namespace `ns`.
fn address_of(ns: &str, dev: &str) -> String {
    let out = sh_ok(ns, &format!("ip -4 -o addr show dev {dev}"));
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

fn routes_via(ns: &str, dev: &str) -> Vec<String> {
    let mut r: Vec<String> = sh_ok(ns, "ip -4 route show")
        .lines()
        .filter(|l| l.contains(&format!("dev {dev}")) && !l.contains("proto kernel"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    r.sort();
    r
}

#[test]
fn openvpn_over_tcp_gets_an_address_routes_and_the_target() {
    let tb = Testbed::new("ovpn-tcp", 1);
    let config = tb.write_config("", ALL_USERS);
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
    let (fetched, seen) = tb.transfer(c, 5001, 7, false);
    assert!(fetched.contains("ok 20000000 bytes"), "{fetched}");
    assert!(
        seen.contains(&format!("peer={ENI}\n")),
        "target saw: {seen}"
    );
    let (pushed, checked) = tb.transfer(c, 5002, 9, true);
    assert!(pushed.contains("sent 20000000 bytes"), "{pushed}");
    assert!(
        checked.contains(&format!("ok 20000000 bytes from {ENI}")),
        "target saw: {checked}"
    );
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
    sh_ok(c, &format!("ping -c 2 -W 3 {TARGET}"));
    let (fetched, seen) = tb.transfer(c, 5001, 3, false);
    assert!(fetched.contains("ok 20000000 bytes"), "{fetched}");
    assert!(
        seen.contains(&format!("peer={ENI}\n")),
        "target saw: {seen}"
    );
    let (pushed, checked) = tb.transfer(c, 5002, 4, true);
    assert!(pushed.contains("sent 20000000 bytes"), "{pushed}");
    assert!(
        checked.contains("ok 20000000 bytes"),
        "target saw: {checked}"
    );
    let v = tb.connections();
    assert_eq!(v["connections"][0]["transport-protocol"], "udp", "{v}");
    client.stop();
}
