//! Logs that live with logrotate: after the files are moved away, `cvpn-gw
//! reopen-logs` and SIGUSR1 make the gateway write to new files under the
//! configured names, with every line whole in one file or the other and
//! none lost; the shipped logrotate configuration passes `logrotate -d`.

use cvpn_e2e::checks::json_lines;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cvpn_e2e::checks::reaches;
use cvpn_e2e::testbed::{TARGET, Testbed};
use cvpn_e2e::{bin, ok};

const ALL_USERS: &str = r#"
[[authorization_rules]]
destination = "0.0.0.0/0"
"#;

fn has(lines: &[serde_json::Value], key: &str, value: &str, cn: &str) -> bool {
    lines
        .iter()
        .any(|l| l[key] == value && l["common-name"] == cn)
}

/// Waits up to 10 s for a line of `path` that `pred` takes.
fn wait_line(path: &Path, pred: impl Fn(&[serde_json::Value]) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if pred(&json_lines(path)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn moved(path: &Path, n: u32) -> PathBuf {
    let to = PathBuf::from(format!("{}.{n}", path.display()));
    std::fs::rename(path, &to).unwrap();
    to
}

#[test]
fn logs_moved_away_are_reopened_on_request_and_on_sigusr1() {
    let tb = Testbed::new("logs", 2);
    let flows = tb.path("flows.jsonl");
    let conns = tb.connection_log();
    let config = tb.write_config(&format!("flow_log = \"{}\"", flows.display()), ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    let alice = tb.client_profile("alice", &[], 0);
    let bob = tb.client_profile("bob", &[], 1);
    let (a, b) = (&tb.clients[0], &tb.clients[1]);

    let mut alice_client = tb.connect(0, &alice);
    reaches(a, TARGET);
    assert!(wait_line(&flows, |l| has(
        l,
        "flow-log-type",
        "flow-start",
        "alice"
    )));
    // logrotate moves both away; until told, the gateway writes on there.
    let (conns1, flows1) = (moved(&conns, 1), moved(&flows, 1));
    let out = ok(std::process::Command::new(bin("cvpn-gw"))
        .args(["reopen-logs", "--control"])
        .arg(tb.control_socket()));
    assert!(
        out.contains(&format!("reopened {}", conns.display()))
            && out.contains(&format!("reopened {}", flows.display())),
        "{out}"
    );
    let mut bob_client = tb.connect(1, &bob);
    reaches(b, TARGET);
    assert!(wait_line(&flows, |l| has(
        l,
        "flow-log-type",
        "flow-start",
        "bob"
    )));
    alice_client.stop();
    assert!(wait_line(&conns, |l| has(
        l,
        "connection-log-type",
        "connection-reset",
        "alice"
    )));
    // Again, by signal.
    let (conns2, _flows2) = (moved(&conns, 2), moved(&flows, 2));
    gw.signal("USR1");
    gw.wait_for("logs reopened", 5);
    bob_client.stop();
    assert!(wait_line(&conns, |l| has(
        l,
        "connection-log-type",
        "connection-reset",
        "bob"
    )));

    let (c1, c2, c3) = (json_lines(&conns1), json_lines(&conns2), json_lines(&conns));
    assert!(has(&c1, "connection-attempt-status", "successful", "alice"));
    assert!(has(&c2, "connection-attempt-status", "successful", "bob"));
    assert!(has(&c2, "connection-log-type", "connection-reset", "alice"));
    assert!(has(&c3, "connection-log-type", "connection-reset", "bob"));
    // Nothing lost, nothing twice: two attempts and two ends in all.
    let all: Vec<_> = [c1, c2, c3].concat();
    assert_eq!(all.len(), 4, "{all:?}");
    let f1 = json_lines(&flows1);
    assert!(has(&f1, "flow-log-type", "flow-start", "alice"));
    assert!(!has(&f1, "flow-log-type", "flow-start", "bob"));
    let meta = std::fs::metadata(&conns).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
}

#[test]
fn the_shipped_logrotate_configuration_passes_logrotate_d() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/logrotate/cvpn-gw");
    let state = tempfile::NamedTempFile::new().unwrap();
    let out = std::process::Command::new("logrotate")
        .arg("-d")
        .arg("-s")
        .arg(state.path())
        .arg(&conf)
        .output()
        .expect("logrotate (scripts/deps.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("error"), "{text}");
    assert!(
        text.contains("/var/log/cvpn/connections.jsonl")
            && text.contains("/var/log/cvpn/flows.jsonl"),
        "{text}"
    );
}
