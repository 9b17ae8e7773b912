//! Bad input to `cvpn-pki` exits non-zero with a message naming the problem
//! and leaves the CA directory exactly as it was; parallel issuance is safe.

use std::collections::HashSet;
use std::process::{Command, Stdio};

use cvpn_e2e::{Pki, bin, fails, ok, snapshot};

/// Runs `args` against `pki`, expects failure with `expect` in stderr, and
/// checks that no file in the directory changed.
fn refused(pki: &Pki, args: &[&str], expect: &str) {
    let before = snapshot(&pki.dir);
    let err = pki.fails(args);
    assert!(
        err.contains(expect),
        "{args:?}: expected {expect:?} in {err:?}"
    );
    assert_eq!(before, snapshot(&pki.dir), "{args:?} changed the directory");
}

#[test]
fn bad_input_changes_nothing() {
    let pki = Pki::new(&[]);
    pki.ok(&["issue", "client", "alice", "--group", "eng"]);

    refused(
        &pki,
        &["issue", "client", "alice"],
        "already has a valid certificate",
    );
    refused(&pki, &["issue", "server", "alice"], "revoke it first");
    refused(
        &pki,
        &["revoke", "nobody"],
        "no certificate named \"nobody\"",
    );
    refused(&pki, &["init"], "is not empty");
    refused(
        &pki,
        &["issue", "client", "../evil"],
        "invalid name \"../evil\"",
    );
    refused(&pki, &["issue", "client", "a/b"], "invalid name");
    refused(&pki, &["issue", "client", ".."], "invalid name");
    refused(&pki, &["issue", "client", "bob", "--days", "0"], "--days");
    refused(
        &pki,
        &["issue", "client", "bob", "--group", ""],
        "invalid group",
    );
    refused(
        &pki,
        &["issue", "server", "gw", "--dns", "bad name"],
        "--dns",
    );
    refused(&pki, &["show", "nobody"], "no certificate named");
    assert!(!pki.dir.parent().unwrap().join("evil.crt").exists());
    pki.ok(&["revoke", "alice"]);
    refused(&pki, &["revoke", "alice"], "already revoked");
}

#[test]
fn missing_ca_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nothing-here");
    let err = fails(
        Command::new(bin("cvpn-pki"))
            .arg("--dir")
            .arg(&dir)
            .args(["issue", "client", "a"]),
    );
    assert!(err.contains("ca.crt: missing"), "{err}");
    assert!(!dir.exists(), "issue created the directory");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(
        Command::new(bin("cvpn-pki"))
            .arg("--dir")
            .arg(&empty)
            .args(["revoke", "a"]),
    );
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn corrupted_files_are_named() {
    let pki = Pki::new(&[]);
    pki.ok(&["issue", "client", "alice"]);

    std::fs::write(pki.path("index.json"), "{ not json").unwrap();
    refused(&pki, &["issue", "client", "bob"], "index.json: corrupted");
    refused(&pki, &["list"], "index.json: corrupted");
    refused(&pki, &["revoke", "alice"], "index.json: corrupted");

    let pki = Pki::new(&[]);
    std::fs::write(
        pki.path("ca.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    refused(&pki, &["issue", "client", "bob"], "ca.crt: corrupted");

    let pki = Pki::new(&[]);
    std::fs::write(pki.path("ca.key"), "garbage").unwrap();
    refused(&pki, &["issue", "client", "bob"], "ca.key: corrupted");

    let pki = Pki::new(&[]);
    std::fs::write(pki.path("crl.pem"), "").unwrap();
    refused(&pki, &["list"], "crl.pem: corrupted");
}

#[test]
fn twenty_parallel_issues() {
    let pki = Pki::new(&[]);
    let children: Vec<_> = (0..20)
        .map(|i| {
            pki.cmd(&["issue", "client", &format!("user{i}"), "--group", "load"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn cvpn-pki")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let index: serde_json::Value = serde_json::from_str(&pki.read("index.json")).unwrap();
    let entries = index["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 20);
    let serials: HashSet<_> = entries
        .iter()
        .map(|e| e["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials.len(), 20);
    let names: HashSet<_> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 20);
    for i in 0..20 {
        let out = ok(Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(pki.path("ca.crt"))
            .arg(pki.cert(&format!("user{i}"))));
        assert!(out.contains(": OK"));
    }
}

#[test]
fn batch_issue_is_all_or_nothing() {
    let pki = Pki::new(&[]);
    pki.ok(&["issue", "client", "load-3"]);
    refused(
        &pki,
        &["issue", "client", "load", "--count", "5"],
        "\"load-3\" already has a valid certificate",
    );
    pki.ok(&["revoke", "load-3"]);
    let out = pki.ok(&[
        "issue", "client", "load", "--count", "50", "--group", "bench",
    ]);
    assert!(out.contains("issued 50 client certificates"), "{out}");
    let index: serde_json::Value = serde_json::from_str(&pki.read("index.json")).unwrap();
    let valid: HashSet<_> = index["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "valid")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(valid.len(), 50);
    for i in [1, 25, 50] {
        let out = ok(Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(pki.path("ca.crt"))
            .arg(pki.cert(&format!("load-{i}"))));
        assert!(out.contains(": OK"));
    }
}
