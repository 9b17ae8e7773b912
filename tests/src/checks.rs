//! What the tests check from a client's side: whether a ping is answered
//! or refused the way the policy says, and the connection log's records.

use crate::netns::sh;
use crate::testbed::Testbed;

/// Pings once; returns (answered, output).
pub fn ping(ns: &str, dst: &str) -> (bool, String) {
    let out = sh(ns, &format!("ping -n -c 1 -W 5 {dst} 2>&1"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The ping from `ns` to `dst` is answered.
pub fn reaches(ns: &str, dst: &str) {
    let (ok, out) = ping(ns, dst);
    assert!(ok, "{ns} should reach {dst}: {out}");
}

/// Refused with ICMP communication administratively prohibited from the
/// gateway, which ping reports as "Packet filtered" at once.
pub fn denied(ns: &str, dst: &str) {
    let (ok, out) = ping(ns, dst);
    assert!(
        !ok && out.contains("From 10.250.0.1") && out.contains("Packet filtered"),
        "{ns} -> {dst} should be denied: {out}"
    );
}

/// The connection log's records so far.
pub fn connection_log(tb: &Testbed) -> Vec<serde_json::Value> {
    std::fs::read_to_string(tb.connection_log())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}
