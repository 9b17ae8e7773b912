//! What the gateway adds to its host is gone after it exits: on SIGTERM,
//! and after kill -9 once a new run has started and stopped. Pushed DNS
//! works through the tunnel and the client's resolver is restored.

use cvpn_e2e::netns::{Netns, Proc, in_ns, sh, sh_ok};
use cvpn_e2e::testbed::{TARGET, Testbed};

const ALL_USERS: &str = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";

struct HostView {
    tun: bool,
    table: bool,
    cidr_route: bool,
    ip_forward: String,
}

fn look(ns: &str) -> HostView {
    HostView {
        tun: sh(ns, "ip link show cvpn-gw0").status.success(),
        table: sh(ns, "nft list table ip cvpn_gw").status.success(),
        cidr_route: sh_ok(ns, "ip -4 route show").contains("10.250.0.0/22"),
        ip_forward: sh_ok(ns, "cat /proc/sys/net/ipv4/ip_forward")
            .trim()
            .to_string(),
    }
}

fn assert_clean(ns: &str, when: &str) {
    let v = look(ns);
    assert!(!v.tun, "{when}: tun device left");
    assert!(!v.table, "{when}: nftables table left");
    assert!(!v.cidr_route, "{when}: client CIDR route left");
    assert_eq!(v.ip_forward, "0", "{when}: ip_forward not restored");
}

#[test]
fn gateway_removes_what_it_added() {
    let tb = Testbed::new("gwhost", 1);
    let config = tb.write_config("", ALL_USERS);
    assert_clean(&tb.gateway, "before");

    let mut gw = tb.start_gateway(&config);
    let v = look(&tb.gateway);
    assert!(v.tun && v.table && v.cidr_route && v.ip_forward == "1");
    let profile = tb.client_profile("alice", &[], 0);
    let mut client = tb.connect(0, &profile);
    assert_eq!(gw.stop(), 0, "{}", gw.output());
    assert_clean(&tb.gateway, "after SIGTERM");
    // The client hears the endpoint leave.
    assert!(client.wait(10).is_some());
    assert!(
        client.output().contains("endpoint shutting down"),
        "{}",
        client.output()
    );

    let mut gw = tb.start_gateway(&config);
    gw.signal("KILL");
    gw.wait(5);
    let v = look(&tb.gateway);
    assert!(
        v.table,
        "kill -9 should leave the table for the next start to clear"
    );
    let mut gw = tb.start_gateway(&config);
    assert!(
        gw.output()
            .contains("removed the nftables table left by a previous run"),
        "{}",
        gw.output()
    );
    assert_eq!(gw.stop(), 0);
    assert_clean(&tb.gateway, "after kill -9, start, stop");
}

#[test]
fn pushed_dns_resolves_a_private_name() {
    let tb = Testbed::new("dns", 1);
    let config = tb.write_config("dns_servers = [\"192.168.1.20\"]", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    let c = &tb.clients[0];
    let etc = Netns::etc_dir(c);
    std::fs::create_dir_all(&etc).unwrap();
    let original = "# the client's own resolver\nnameserver 198.18.0.53\n";
    std::fs::write(etc.join("resolv.conf"), original).unwrap();

    let _dns = {
        let mut cmd = in_ns(&tb.target, std::path::Path::new("dnsmasq"));
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            "--listen-address=192.168.1.20",
            "--address=/db.corp.internal/192.168.1.20",
            "--user=root",
            "--pid-file",
            "--log-facility=-",
        ]);
        let mut p = Proc::spawn("dnsmasq", cmd);
        p.wait_for("started", 10);
        p
    };
    let mut db = Proc::spawn("database", {
        let mut cmd = in_ns(&tb.target, &tb.helper());
        cmd.args([
            "serve",
            "--listen",
            &format!("{TARGET}:5432"),
            "--bytes",
            "100000",
            "--seed",
            "3",
        ]);
        cmd
    });
    db.wait_for("listening", 10);

    let profile = tb.client_profile("alice", &[], 0);
    let mut client = tb.connect(0, &profile);
    assert!(
        client.output().contains("dns         192.168.1.20"),
        "{}",
        client.output()
    );
    let resolved = sh_ok(c, "getent hosts db.corp.internal");
    assert!(resolved.starts_with("192.168.1.20"), "{resolved}");
    let fetched = sh_ok(
        c,
        &format!(
            "{} fetch --connect db.corp.internal:5432 --bytes 100000 --seed 3",
            tb.helper().display()
        ),
    );
    assert!(fetched.contains("ok 100000 bytes"), "{fetched}");

    assert_eq!(client.stop(), 0);
    assert_eq!(
        std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
        original
    );
}

/// Two gateways on one host (different network namespaces) may not share
/// a state directory: the second is refused, naming it, and touches
/// nothing.
#[test]
fn a_state_dir_in_use_is_refused() {
    let first = Testbed::new("statedir1", 1);
    let second = Testbed::new("statedir2", 1);
    let config = first.write_config("", ALL_USERS);
    let _gw = first.start_gateway(&config);
    let other = second.write_config("", ALL_USERS);
    let shared = first.path("state").display().to_string();
    let text = std::fs::read_to_string(&other)
        .unwrap()
        .replace(&second.path("state").display().to_string(), &shared);
    std::fs::write(&other, text).unwrap();
    let out = cvpn_e2e::run(
        in_ns(&second.gateway, &cvpn_e2e::bin("cvpn-gw"))
            .args(["serve", "--config"])
            .arg(&other),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains(&shared) && said.contains("another live cvpn-gw"),
        "{said}"
    );
    assert_clean(&second.gateway, "after the refusal");
}
