//! A network behind a client (site to site): host A in the target network
//! and host B behind a site router running the client reach each other
//! both ways, B sees A's real address, laptops reach B by the rules, and
//! B's network is unreachable at once while the site is down. Once with
//! cvpn-client as the site router, once with stock openvpn 2.6.

use std::path::Path;

use cvpn_e2e::checks::{denied, ping, reaches};
use cvpn_e2e::netns::{Proc, in_ns, sh_ok};
use cvpn_e2e::openvpn::{openvpn, spawn_openvpn, wait_connected};
use cvpn_e2e::testbed::{ENI, TARGET, Testbed};

/// Host B, behind the site router (client 1).
const HOST_B: &str = "10.42.0.5";
const SITE_CIDR: &str = "10.42.0.0/16";

/// Client 0 is a laptop in group eng, client 1 the site router, client 2
/// a laptop in group sales. The site's LAN namespace holds host B; host A
/// is the target (192.168.1.20), which routes the site's CIDR to the ENI
/// address (the VPC route-table step).
struct Site {
    tb: Testbed,
    lan: String,
    gw: Proc,
    config: std::path::PathBuf,
}

fn site(tag: &str) -> Site {
    let mut tb = Testbed::new(tag, 3);
    let lan = tb.netns.add("lan");
    let router = &tb.clients[1];
    sh_ok(
        router,
        &format!(
            "ip link add s1 type veth peer name b0 netns {lan} && \
             ip addr add 10.42.0.1/24 dev s1 && ip link set s1 up && \
             echo 1 > /proc/sys/net/ipv4/ip_forward"
        ),
    );
    sh_ok(
        &lan,
        &format!(
            "ip addr add {HOST_B}/24 dev b0 && ip link set b0 up && ip link set lo up && \
             ip route add default via 10.42.0.1"
        ),
    );
    sh_ok(&tb.target, &format!("ip route add {SITE_CIDR} via {ENI}"));
    let flows = tb.path("flows.jsonl");
    let config = tb.write_config(
        &format!("flow_log = \"{}\"", flows.display()),
        &site_tables(true),
    );
    let gw = tb.start_gateway(&config);
    Site {
        tb,
        lan,
        gw,
        config,
    }
}

/// The rules, with or without the site's network.
fn site_tables(with_site: bool) -> String {
    let site = if with_site {
        format!(
            r#"
[[client_networks]]
common_name = "site-b"
cidr = "{SITE_CIDR}"
reachable_from = ["tn-a"]
"#
        )
    } else {
        String::new()
    };
    format!(
        r#"{site}
[[authorization_rules]]
destination = "{SITE_CIDR}"
access_group = "eng"

[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "site"
"#
    )
}

/// `cvpn-gw reload` of the testbed's configuration with or without the
/// site's network.
fn reload(s: &Site, with_site: bool) {
    let flows = s.tb.path("flows.jsonl");
    s.tb.write_config(
        &format!("flow_log = \"{}\"", flows.display()),
        &site_tables(with_site),
    );
    cvpn_e2e::ok(
        std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
            .args(["reload", "--control"])
            .arg(s.tb.control_socket()),
    );
}

/// `bytes` from a server in `server_ns` on `addr` to a fetching client in
/// `client_ns`, checked byte for byte; returns the address the server saw.
fn fetch(tb: &Testbed, server_ns: &str, client_ns: &str, addr: &str, seed: u32) -> String {
    let helper = tb.helper();
    let mut server = Proc::spawn("server", {
        let mut cmd = in_ns(server_ns, &helper);
        cmd.args(["serve", "--listen", addr, "--bytes", "2000000"]);
        cmd.args(["--seed", &seed.to_string()]);
        cmd
    });
    server.wait_for("listening", 10);
    let got = sh_ok(
        client_ns,
        &format!(
            "{} fetch --connect {addr} --bytes 2000000 --seed {seed}",
            helper.display()
        ),
    );
    assert!(got.contains("ok 2000000 bytes"), "{got}");
    let seen = server.wait_for("peer=", 10);
    seen.lines()
        .find_map(|l| l.strip_prefix("peer="))
        .unwrap_or("")
        .to_string()
}

/// What a site must show, whatever client software routes it.
fn site_works(s: &Site) {
    let tb = &s.tb;
    // A and B, both ways: pings and TCP.
    reaches(&tb.target, HOST_B);
    reaches(&s.lan, TARGET);
    let seen_by_b = fetch(tb, &s.lan, &tb.target, &format!("{HOST_B}:7001"), 11);
    assert_eq!(seen_by_b, TARGET, "B sees A's real address");
    let seen_by_a = fetch(tb, &tb.target, &s.lan, &format!("{TARGET}:7002"), 12);
    assert_eq!(seen_by_a, ENI, "A sees the site as the ENI address (snat)");
    // Laptops: eng reaches B (ping and TCP), sales is refused.
    reaches(&tb.clients[0], HOST_B);
    let seen = fetch(tb, &s.lan, &tb.clients[0], &format!("{HOST_B}:7003"), 13);
    assert!(
        seen.starts_with("10.250."),
        "B sees the laptop's address: {seen}"
    );
    denied(&tb.clients[2], HOST_B);
    // Nothing else from the site reaches the laptops on its own.
    let (ok, out) = ping(&s.lan, &tb.addresses()["alice"]);
    assert!(!ok, "the site opened a flow to a laptop: {out}");
}

/// While the site is down its network is unreachable at once (ICMP net
/// unreachable from the gateway), and it comes back with the site.
fn unreachable_while_down(tb: &Testbed) {
    let (ok, out) = ping(&tb.clients[0], HOST_B);
    assert!(
        !ok && out.contains("From 10.250.0.1") && out.contains("Net Unreachable"),
        "B's network should be unreachable at once: {out}"
    );
}

fn check_output(config: &Path) -> String {
    cvpn_e2e::ok(
        std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
            .args(["check", "--config"])
            .arg(config),
    )
}

#[test]
fn cvpn_client_routes_a_site() {
    let s = site("site-cvpn");
    let tb = &s.tb;
    let check = check_output(&s.config);
    assert!(
        check
            .lines()
            .any(|l| l.contains(SITE_CIDR) && l.contains("site-b") && l.contains("client-network")),
        "{check}"
    );
    let alice = tb.client_profile("alice", &["eng"], 0);
    let site_profile = tb.client_profile("site-b", &["site"], 1);
    let bob = tb.client_profile("bob", &["sales"], 2);
    let _alice = tb.connect(0, &alice);
    let _bob = tb.connect(2, &bob);
    let mut router = tb.connect(1, &site_profile);
    let status = router.output();
    assert!(
        status.contains(&format!("carries     {SITE_CIDR}")),
        "the site's status names its network: {status}"
    );
    assert!(
        !status
            .lines()
            .any(|l| l.starts_with("  routes") && l.contains(SITE_CIDR)),
        "a site is never pushed its own network: {status}"
    );
    let routes = sh_ok(&tb.clients[0], "ip -4 route show");
    assert!(
        routes.contains(SITE_CIDR),
        "laptops get the site's route: {routes}"
    );
    site_works(&s);
    router.stop();
    unreachable_while_down(tb);
    let _router = tb.connect(1, &site_profile);
    reaches(&tb.clients[0], HOST_B);
    reaches(&tb.target, HOST_B);
    // Live: without the site's network nothing routes to it, on the
    // gateway host or the laptops; with it back, B answers again.
    reload(&s, false);
    let gw_routes = sh_ok(&tb.gateway, "ip -4 route show");
    assert!(!gw_routes.contains("10.42.0.0/16"), "{gw_routes}");
    let (ok, out) = ping(&tb.target, HOST_B);
    assert!(!ok, "{out}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let laptop_routes = sh_ok(&tb.clients[0], "ip -4 route show");
    assert!(!laptop_routes.contains(SITE_CIDR), "{laptop_routes}");
    reload(&s, true);
    reaches(&tb.target, HOST_B);
    std::thread::sleep(std::time::Duration::from_millis(500));
    reaches(&tb.clients[0], HOST_B);
    // The logs name the site: its sessions carry its network, and the
    // flows from and into it are its identity's.
    let records = cvpn_e2e::checks::connection_log(tb);
    assert!(
        records
            .iter()
            .any(|r| r["common-name"] == "site-b" && r["client-networks"] == SITE_CIDR),
        "{records:?}"
    );
    let flows = cvpn_e2e::checks::json_lines(&tb.path("flows.jsonl"));
    let site_flow = |src: &str, dst: &str| {
        flows.iter().any(|f| {
            f["common-name"] == "site-b"
                && f["pkt-srcaddr"] == src
                && f["dstaddr"] == dst
                && f["target-network"] == "tn-a"
        })
    };
    assert!(site_flow(HOST_B, TARGET), "B's flow to A: {flows:?}");
    assert!(
        site_flow(TARGET, HOST_B),
        "A's flow into the site: {flows:?}"
    );
    // What B's network sends counts as the site session's traffic.
    let conns = tb.connections();
    let site_bytes = conns["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["common-name"] == "site-b")
        .map(|c| c["ingress-bytes"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    assert!(site_bytes > 0, "{conns}");
    drop(s.gw);
}

#[test]
fn stock_openvpn_routes_a_site() {
    let s = site("site-ovpn");
    let tb = &s.tb;
    let alice = tb.client_profile("alice", &["eng"], 0);
    let site_profile = tb.client_profile("site-b", &["site"], 1);
    let bob = tb.client_profile("bob", &["sales"], 2);
    let _alice = tb.connect(0, &alice);
    let _bob = tb.connect(2, &bob);
    let mut router = openvpn(tb, &s.gw, 1, &site_profile, &[]);
    let pushed = router.output();
    assert!(
        !pushed.contains("route 10.42.0.0 255.255.0.0"),
        "a site is never pushed its own network: {pushed}"
    );
    site_works(&s);
    router.stop();
    unreachable_while_down(tb);
    let router = spawn_openvpn(tb, 1, &site_profile, &[]);
    wait_connected(&router, &s.gw, 30);
    reaches(&tb.clients[0], HOST_B);
    reaches(&tb.target, HOST_B);
}
