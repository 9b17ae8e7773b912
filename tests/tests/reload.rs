//! Live configuration: SIGHUP and `cvpn-gw reload` apply routes and rules
//! to open sessions at once, refuse an invalid file or a change that needs
//! a restart, and keep each session's groups meaning the same groups.

use cvpn_e2e::checks::{denied, ping, reaches};
use cvpn_e2e::testbed::{PEERED, TARGET, Testbed};
use cvpn_e2e::{bin, fails, ok};

fn reload(tb: &Testbed) -> std::process::Command {
    let mut c = std::process::Command::new(bin("cvpn-gw"));
    c.args(["reload", "--control"]).arg(tb.control_socket());
    c
}

const B_ONLY: &str = r#"
[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "B"
"#;

/// A rule for a new group A inserted before B's: group bits are numbered
/// anew, B's must keep meaning B.
const A_THEN_B: &str = r#"
[[authorization_rules]]
destination = "10.20.0.0/16"
access_group = "A"

[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "B"
"#;

const B_AND_PEERED: &str = r#"
[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "B"

[[authorization_rules]]
destination = "10.20.0.0/16"
access_group = "B"
"#;

#[test]
fn rules_change_live_and_groups_keep_their_meaning() {
    let tb = Testbed::new("reload", 1);
    let config = tb.write_config("", B_ONLY);
    let mut gw = tb.start_gateway(&config);
    let profile = tb.client_profile("bob", &["B"], 0);
    let _client = tb.connect(0, &profile);
    let c = &tb.clients[0];
    let id = tb.connections()["connections"][0]["connection-id"].clone();
    reaches(c, TARGET);
    denied(c, PEERED);

    // A new group's rule in front: bob keeps exactly B's access.
    tb.write_config("", A_THEN_B);
    let out = ok(&mut reload(&tb));
    assert!(out.contains("authorization_rules"), "{out}");
    reaches(c, TARGET);
    denied(c, PEERED);

    // A rule for the routed network, by SIGHUP: allowed at once.
    tb.write_config("", B_AND_PEERED);
    gw.signal("HUP");
    gw.wait_for("configuration reloaded", 5);
    reaches(c, PEERED);

    // Removing it denies at once.
    tb.write_config("", B_ONLY);
    let t0 = std::time::Instant::now();
    ok(&mut reload(&tb));
    eprintln!("reload applied and reported in {:?}", t0.elapsed());
    denied(c, PEERED);
    reaches(c, TARGET);

    // An invalid edit changes nothing and names the key.
    tb.write_config(
        "",
        "[[authorization_rules]]\ndestination = \"10.20.0.1/16\"\n",
    );
    let err = fails(&mut reload(&tb));
    assert!(
        err.contains("authorization_rules") && err.contains("destination"),
        "{err}"
    );
    reaches(c, TARGET);

    // A client CIDR change needs a restart.
    tb.write_config("", B_ONLY);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("10.250.0.0/22", "10.251.0.0/22")).unwrap();
    let err = fails(&mut reload(&tb));
    assert!(err.contains("needs a restart: client_cidr"), "{err}");
    reaches(c, TARGET);

    // The same session all along, and the reloads counted.
    let v = tb.connections();
    assert_eq!(v["connections"][0]["connection-id"], id, "{v}");
}

const ROUTED: &str = "[[routes]]\ndestination = \"10.20.0.0/16\"\ntarget = \"tn-a\"\n";

#[test]
fn a_new_route_reaches_connected_clients_without_a_reconnect() {
    let tb = Testbed::new("reload-rt", 2);
    let rules = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";
    // Start without the routed network.
    let config = tb.write_config("", rules);
    let without = std::fs::read_to_string(&config)
        .unwrap()
        .replace(ROUTED, "");
    std::fs::write(&config, &without).unwrap();
    let _gw = tb.start_gateway(&config);
    let profile = tb.client_profile("carol", &[], 0);
    let mut client = tb.connect(0, &profile);
    let dave = tb.client_profile("dave", &[], 1);
    let mut cmd = cvpn_e2e::netns::in_ns(&tb.clients[1], std::path::Path::new("openvpn"));
    cmd.arg("--config").arg(&dave);
    let mut ovpn = cvpn_e2e::netns::Proc::spawn("openvpn", cmd);
    ovpn.wait_for("Initialization Sequence Completed", 30);
    let c = &tb.clients[0];
    let (reached, _) = ping(c, PEERED);
    assert!(!reached, "no route yet");
    let before = tb.connections();

    tb.write_config("", rules);
    let out = ok(&mut reload(&tb));
    assert!(out.contains("routes"), "{out}");
    client.wait_for("routes updated", 5);
    let routes = cvpn_e2e::netns::sh_ok(c, "ip -4 route show proto 179");
    assert!(routes.contains("10.20.0.0/16 dev cvpn0"), "{routes}");
    reaches(c, PEERED);

    // Same sessions; the OpenVPN client, which cannot take routes while
    // connected, is marked as having stale ones.
    let after = tb.connections();
    let by_cn = |v: &serde_json::Value, cn: &str| {
        v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["common-name"] == cn)
            .cloned()
            .unwrap()
    };
    for cn in ["carol", "dave"] {
        assert_eq!(
            by_cn(&before, cn)["connection-id"],
            by_cn(&after, cn)["connection-id"]
        );
    }
    assert_eq!(by_cn(&after, "carol")["stale-routes"], false, "{after}");
    assert_eq!(by_cn(&after, "dave")["stale-routes"], true, "{after}");
    ovpn.stop();
}
