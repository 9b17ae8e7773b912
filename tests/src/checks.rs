//! What the tests check from a client's side: whether a ping is answered
//! or refused the way the policy says, and the connection log's records.

use crate::netns::{sh, sh_ok};
use crate::testbed::{ENI, Testbed};

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

/// 20 MB from the target to client namespace `c` on `port`, then 20 MB
/// back on `port + 1` (seeds `seeds`): both arrive byte-exact, and the
/// target sees the ENI address both times.
pub fn transfers_both_ways_from_eni(tb: &Testbed, c: &str, port: u16, seeds: (u32, u32)) {
    let (fetched, seen) = tb.transfer(c, port, seeds.0, false);
    assert!(fetched.contains("ok 20000000 bytes"), "{fetched}");
    assert!(
        seen.contains(&format!("peer={ENI}\n")),
        "target saw: {seen}"
    );
    let (pushed, checked) = tb.transfer(c, port + 1, seeds.1, true);
    assert!(pushed.contains("sent 20000000 bytes"), "{pushed}");
    assert!(
        checked.contains(&format!("ok 20000000 bytes from {ENI}")),
        "target saw: {checked}"
    );
}

/// `count` pings from `ns` to `dst` 0.2 s apart (a renegotiation or two
/// happen meanwhile); returns how many were answered and ping's summary.
pub fn pings_answered(ns: &str, dst: &str, count: u32) -> (u32, String) {
    let out = crate::netns::sh_ok(
        ns,
        &format!("ping -n -q -c {count} -i 0.2 -W 1 {dst} || true"),
    );
    let received = out
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" received")?.parse().ok())
        .unwrap_or(0);
    (received, out)
}

/// The connection log's records so far.
pub fn connection_log(tb: &Testbed) -> Vec<serde_json::Value> {
    json_lines(&tb.connection_log())
}

/// The JSON objects of a log file, one per line (none if it is absent);
/// panics naming the file and the line that is not JSON.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path:?}: {l:?}: {e}")))
        .collect()
}

/// (InDatagrams, OutDatagrams) of namespace `ns`'s UDP stack.
pub fn udp_counters(ns: &str) -> (u64, u64) {
    let snmp = sh_ok(ns, "cat /proc/net/snmp");
    let rows: Vec<Vec<&str>> = snmp
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let value = |name: &str| {
        let i = rows[0].iter().position(|h| *h == name).expect(name);
        rows[1][i].parse::<u64>().expect("counter")
    };
    (value("InDatagrams"), value("OutDatagrams"))
}
