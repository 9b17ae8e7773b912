//! `snat = false` per target network: its hosts see client addresses (and
//! need a route back); with `snat = true` (the default) the ENI address.

use cvpn_e2e::netns::sh_ok;
use cvpn_e2e::testbed::{ENI, TARGET, Testbed};

const ALL_USERS: &str = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";

#[test]
fn targets_see_the_eni_address_or_with_snat_off_the_client() {
    let tb = Testbed::new("snat", 1);
    let config = tb.write_config("", ALL_USERS);
    let profile = tb.client_profile("erin", &[], 0);
    let c = &tb.clients[0];
    {
        let _gw = tb.start_gateway(&config);
        let _client = tb.connect(0, &profile);
        let (_, seen) = tb.transfer(c, 5001, 1, false);
        assert!(seen.contains(&format!("peer={ENI}\n")), "{seen}");
    }
    // The same network with snat = false, and the route back on the target.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "vpc_cidr = \"192.168.1.0/24\"",
        "vpc_cidr = \"192.168.1.0/24\"\nsnat = false",
    );
    std::fs::write(&config, text).unwrap();
    let warned = std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(warned.status.success());
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(
        stderr.contains("snat = false") && stderr.contains("route back"),
        "{stderr}"
    );
    sh_ok(&tb.target, &format!("ip route add 10.250.0.0/22 via {ENI}"));
    let _gw = tb.start_gateway(&config);
    let _client = tb.connect(0, &profile);
    let address = tb.addresses()["erin"].clone();
    sh_ok(c, &format!("ping -c 1 -W 3 {TARGET}"));
    let (fetched, seen) = tb.transfer(c, 5002, 2, false);
    assert!(fetched.contains("ok 20000000 bytes"), "{fetched}");
    assert!(seen.contains(&format!("peer={address}\n")), "{seen}");
}
