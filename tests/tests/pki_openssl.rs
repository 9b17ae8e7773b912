//! What `cvpn-pki` writes is accepted by OpenSSL: chains verify, revoked
//! certificates fail a CRL check, and the extensions are as documented.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use cvpn_e2e::{Pki, ok};

fn openssl(args: &[&str]) -> Command {
    let mut c = Command::new("openssl");
    c.args(args);
    c
}

fn x509_text(path: &std::path::Path) -> String {
    ok(openssl(&["x509", "-noout", "-text", "-in"]).arg(path))
}

/// A server with extra SANs and a client in two groups.
fn issue_pair(pki: &Pki) {
    pki.ok(&[
        "issue",
        "server",
        "vpn.example.com",
        "--dns",
        "vpn2.example.com",
        "--ip",
        "198.18.0.1",
    ]);
    pki.ok(&[
        "issue", "client", "alice", "--group", "eng", "--group", "ops",
    ]);
}

#[test]
fn openssl_accepts_every_key_type() {
    for key_type in ["ecdsa-p256", "ed25519", "rsa-2048"] {
        let pki = Pki::new(&["--cn", "Test CA", "--key-type", key_type]);
        issue_pair(&pki);
        let ca = pki.path("ca.crt");
        for name in ["vpn.example.com", "alice"] {
            let out = ok(openssl(&["verify", "-CAfile"]).arg(&ca).arg(pki.cert(name)));
            assert!(out.contains(": OK"), "{key_type} {name}: {out}");
        }
        let ca_text = x509_text(&ca);
        assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
        assert!(ca_text.contains("Certificate Sign, CRL Sign"), "{ca_text}");
        let key_algo = match key_type {
            "ecdsa-p256" => "id-ecPublicKey",
            "ed25519" => "ED25519",
            _ => "rsaEncryption",
        };
        assert!(ca_text.contains(key_algo), "{key_type}: {ca_text}");
    }
}

#[test]
fn extensions_sans_and_groups() {
    let pki = Pki::new(&[]);
    issue_pair(&pki);

    let server = x509_text(&pki.cert("vpn.example.com"));
    assert!(server.contains("TLS Web Server Authentication"), "{server}");
    assert!(
        !server.contains("TLS Web Client Authentication"),
        "{server}"
    );
    assert!(
        server.contains("DNS:vpn.example.com, DNS:vpn2.example.com, IP Address:198.18.0.1"),
        "{server}"
    );

    let client = x509_text(&pki.cert("alice"));
    assert!(client.contains("TLS Web Client Authentication"), "{client}");
    assert!(
        !client.contains("TLS Web Server Authentication"),
        "{client}"
    );
    let subject = ok(
        openssl(&["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(pki.cert("alice")),
    );
    assert_eq!(subject.trim(), "subject=CN=alice,OU=ops,OU=eng");

    // Validity: 825 days for servers, 365 for clients, 10 years for the CA.
    let days = |path: &std::path::Path| {
        let out = ok(openssl(&["x509", "-noout", "-enddate", "-in"]).arg(path));
        let end = out.trim().trim_start_matches("notAfter=").to_string();
        let parsed = ok(Command::new("date").args(["-d", &end, "+%s"]));
        let now = ok(Command::new("date").arg("+%s"));
        (parsed.trim().parse::<i64>().unwrap() - now.trim().parse::<i64>().unwrap()) / 86_400
    };
    assert!((824..=825).contains(&days(&pki.cert("vpn.example.com"))));
    assert!((364..=365).contains(&days(&pki.cert("alice"))));
    assert!((3649..=3650).contains(&days(&pki.path("ca.crt"))));

    for name in ["vpn.example.com", "alice"] {
        let mode = std::fs::metadata(pki.key(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.key has mode {mode:o}");
    }
    let mode = std::fs::metadata(pki.path("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn revoked_certificate_fails_crl_check() {
    let pki = Pki::new(&[]);
    pki.ok(&["issue", "client", "alice"]);
    pki.ok(&["issue", "client", "bob"]);
    pki.ok(&["revoke", "bob"]);

    let chain = pki.path("chain-with-crl.pem");
    std::fs::write(&chain, pki.read("ca.crt") + &pki.read("crl.pem")).unwrap();
    let out = ok(openssl(&["verify", "-crl_check", "-CAfile"])
        .arg(&chain)
        .arg(pki.cert("alice")));
    assert!(out.contains(": OK"));
    let verdict = verify_with_crl(&chain, &pki.cert("bob"));
    assert!(verdict.contains("certificate revoked"), "{verdict}");

    let bob_serial = ok(openssl(&["x509", "-noout", "-serial", "-in"]).arg(pki.cert("bob")));
    let bob_serial = bob_serial
        .trim()
        .trim_start_matches("serial=")
        .to_uppercase();
    let crl = ok(openssl(&["crl", "-noout", "-text", "-in"]).arg(pki.path("crl.pem")));
    assert!(
        crl.contains(&format!("Serial Number: {bob_serial}")),
        "{crl}"
    );
    let alice_serial = ok(openssl(&["x509", "-noout", "-serial", "-in"]).arg(pki.cert("alice")));
    let alice_serial = alice_serial
        .trim()
        .trim_start_matches("serial=")
        .to_uppercase();
    assert!(!crl.contains(&alice_serial), "{crl}");

    // `crl` re-signs with a new number and the chosen validity; bob stays listed.
    pki.ok(&["crl", "--days", "10"]);
    let crl2 = ok(openssl(&["crl", "-noout", "-text", "-in"]).arg(pki.path("crl.pem")));
    assert!(crl2.contains(&bob_serial));
    assert_ne!(crl, crl2);
    let list = pki.ok(&["list"]);
    assert!(
        list.contains("(9 days left)") || list.contains("(10 days left)"),
        "{list}"
    );
    let warn = cvpn_e2e::run(&mut pki.cmd(&["list"]));
    assert!(String::from_utf8_lossy(&warn.stderr).contains("warning: the CRL expires"));
}

/// Runs `openssl verify -crl_check`, which must fail; returns its output
/// (stdout or stderr depending on the OpenSSL version).
fn verify_with_crl(chain: &std::path::Path, cert: &std::path::Path) -> String {
    let out = cvpn_e2e::run(
        openssl(&["verify", "-crl_check", "-CAfile"])
            .arg(chain)
            .arg(cert),
    );
    assert!(
        !out.status.success(),
        "openssl verify accepted a revoked certificate"
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn list_and_show() {
    let pki = Pki::new(&[]);
    pki.ok(&["issue", "client", "alice", "--group", "eng"]);
    pki.ok(&["issue", "server", "gw", "--ip", "198.18.0.1"]);
    pki.ok(&["revoke", "alice"]);
    let list: serde_json::Value = serde_json::from_str(&pki.ok(&["list", "--json"])).unwrap();
    let certs = list["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0]["name"], "alice");
    assert_eq!(certs[0]["state"], "revoked");
    assert_eq!(certs[0]["groups"][0], "eng");
    assert_eq!(certs[1]["kind"], "server");
    assert!(list["crl_days_left"].as_i64().unwrap() >= 179);

    let show = pki.ok(&["show", "gw"]);
    assert!(show.contains("DNS:gw, IP:198.18.0.1"), "{show}");
    assert!(show.contains("state:      valid"), "{show}");
    let show = pki.ok(&["show", "alice"]);
    assert!(show.contains("groups:     eng"), "{show}");
    assert!(show.contains("state:      revoked at "), "{show}");

    // A revoked name can be issued again; the index keeps both.
    pki.ok(&["issue", "client", "alice", "--group", "ops"]);
    assert!(pki.ok(&["show", "alice"]).contains("groups:     ops"));
    assert!(
        pki.ok(&["list"])
            .lines()
            .filter(|l| l.starts_with("alice "))
            .count()
            == 2
    );
}
