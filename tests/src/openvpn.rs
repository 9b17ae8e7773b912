//! Stock OpenVPN clients (Debian's openvpn 2.6) in the test namespaces:
//! started with a profile, waited for, and what they installed.

use std::path::Path;

use crate::netns::{Proc, in_ns, sh_ok};
use crate::testbed::Testbed;

/// Starts `openvpn --config PROFILE EXTRA...` in client `i`, not waiting.
pub fn spawn_openvpn(tb: &Testbed, i: usize, profile: &Path, extra: &[&str]) -> Proc {
    let mut cmd = in_ns(&tb.clients[i], Path::new("openvpn"));
    cmd.arg("--config").arg(profile).args(extra);
    Proc::spawn(&format!("openvpn {i}"), cmd)
}

/// Waits up to `secs` until `p`'s tunnel is up; on failure, says what the
/// client and the gateway printed.
pub fn wait_connected(p: &Proc, gw: &Proc, secs: u64) {
    for _ in 0..secs * 10 {
        if p.output().contains("Initialization Sequence Completed") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "openvpn not connected within {secs} s:\n{}\ngateway:\n{}",
        p.output(),
        gw.output()
    );
}

/// Starts `openvpn --config PROFILE` in client `i` and waits until its
/// tunnel is up.
pub fn openvpn(tb: &Testbed, gw: &Proc, i: usize, profile: &Path, extra: &[&str]) -> Proc {
    let p = spawn_openvpn(tb, i, profile, extra);
    wait_connected(&p, gw, 30);
    p
}

/// The IPv4 address of `dev` in namespace `ns`.
pub fn address_of(ns: &str, dev: &str) -> String {
    let out = sh_ok(ns, &format!("ip -4 -o addr show dev {dev}"));
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// The IPv4 routes through `dev` that the client added (not the
/// kernel's own), sorted.
pub fn routes_via(ns: &str, dev: &str) -> Vec<String> {
    let mut r: Vec<String> = sh_ok(ns, "ip -4 route show")
        .lines()
        .filter(|l| l.contains(&format!("dev {dev}")) && !l.contains("proto kernel"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    r.sort();
    r
}
