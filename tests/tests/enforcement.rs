//! Client route enforcement: a pushed route that is deleted, or taken
//! over by a more specific route through another device, is put right
//! within 2 s, and the client says so.

use std::time::{Duration, Instant};

use cvpn_e2e::netns::sh_ok;
use cvpn_e2e::testbed::{TARGET, Testbed};

const ALL_USERS: &str = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";

fn routes(ns: &str) -> String {
    sh_ok(ns, "ip -4 route show")
}

/// Polls the client's routes for up to 2 s; how long `ok` took to hold.
fn within_2s(ns: &str, ok: impl Fn(&str) -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if ok(&routes(ns)) {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not put right within 2 s:\n{}", routes(ns));
}

#[test]
fn removed_or_overridden_pushed_routes_are_put_back() {
    let tb = Testbed::new("enforce", 1);
    let config = tb.write_config("", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    let profile = tb.client_profile("fay", &[], 0);
    let mut client = tb.connect(0, &profile);
    let c = &tb.clients[0];
    let pushed = "192.168.1.0/24 dev cvpn0";

    sh_ok(c, "ip route del 192.168.1.0/24 dev cvpn0");
    let took = within_2s(c, |r| r.contains(pushed));
    client.wait_for("route enforcement: restored pushed route 192.168.1.0/24", 2);
    eprintln!("restored after {took:?}");

    sh_ok(c, "ip route add 192.168.1.0/25 dev c0");
    within_2s(c, |r| !r.contains("192.168.1.0/25"));
    client.wait_for("route enforcement: removed route 192.168.1.0/25", 2);
    sh_ok(c, &format!("ping -c 1 -W 3 {TARGET}"));
}
