//! Bugs a hostile review found, kept fixed: a second gateway in the same
//! network namespace, hostile strings in the gateway's own log, and a
//! profile written over an existing file or a symlink.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use cvpn_e2e::netns::{Proc, in_ns, sh, sh_ok};
use cvpn_e2e::testbed::{TARGET, Testbed};
use cvpn_e2e::{bin, ok};

const ALL_USERS: &str = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";

#[test]
fn second_serve_leaves_the_running_gateway_alone() {
    let tb = Testbed::new("double", 1);
    let config = tb.write_config("", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &[], 0);
    let _client = tb.connect(0, &profile);
    let c = &tb.clients[0];
    sh_ok(c, &format!("ping -c 1 -W 3 {TARGET}"));
    let table_before = sh_ok(&tb.gateway, "nft list table ip cvpn_gw");

    // The same configuration, and the same one on another port with
    // another control socket: both refused before touching anything.
    let text = std::fs::read_to_string(&config).unwrap();
    let other = tb.path("other.toml");
    std::fs::write(
        &other,
        text.replace("0.0.0.0:443", "0.0.0.0:8443")
            .replace("gw.sock", "other.sock"),
    )
    .unwrap();
    for cfg in [&config, &other] {
        let mut second = Proc::spawn("second cvpn-gw", {
            let mut cmd = in_ns(&tb.gateway, &bin("cvpn-gw"));
            cmd.arg("serve").arg("--config").arg(cfg);
            cmd
        });
        let code = second.wait(20).expect("second gateway did not exit");
        assert_ne!(code, 0, "{}", second.output());
        assert!(
            second.output().contains("another cvpn-gw (pid"),
            "{}",
            second.output()
        );
    }

    // The first gateway's set-up is intact and its client's traffic flows.
    assert_eq!(
        sh_ok(&tb.gateway, "nft list table ip cvpn_gw"),
        table_before
    );
    assert_eq!(
        sh_ok(&tb.gateway, "cat /proc/sys/net/ipv4/ip_forward").trim(),
        "1"
    );
    assert!(tb.control_socket().exists());
    sh_ok(c, &format!("ping -c 3 -W 3 {TARGET}"));
    assert_eq!(tb.connections()["connections"].as_array().unwrap().len(), 1);
    assert_eq!(gw.stop(), 0, "{}", gw.output());
}

/// A hello whose `os` and `software` carry a forged log line, terminal
/// escapes and a NUL, and is far too long, as a hostile client sends it.
fn hostile_hello() -> String {
    let long = "A".repeat(16_000);
    serde_json::json!({
        "type": "hello",
        "version": 1,
        "os": format!("linux\n2026-12-03T00:00:00Z  INFO cvpn_gw: forged line\r\u{1b}[31mred\u{0}{long}"),
        "client": "evil\n\u{1b}]0;title\u{7}",
    })
    .to_string()
}

#[test]
fn peer_strings_are_escaped_and_capped_in_the_log() {
    let tb = Testbed::new("inject", 1);
    let config = tb.write_config("", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    // A certificate whose CN carries an escape sequence can only come from
    // the CA; the hello is the peer's.
    tb.pki.ok(&["issue", "client", "alice"]);
    let hello = hostile_hello();
    let frame_len = hello.len();
    let p = &tb.pki;
    let script = format!(
        "(printf '\\002\\{:03o}\\{:03o}\\{:03o}'; cat {hello_file}; sleep 2) | timeout 10 openssl s_client -quiet \
         -connect 198.18.0.1:443 -tls1_3 -alpn cvpn/1 -cert {cert} -key {key} -CAfile {ca} >/dev/null 2>&1",
        (frame_len >> 16) & 0xff,
        (frame_len >> 8) & 0xff,
        frame_len & 0xff,
        hello_file = {
            let f = tb.path("hello.json");
            std::fs::write(&f, &hello).unwrap();
            f.display().to_string()
        },
        cert = p.cert("alice").display(),
        key = p.key("alice").display(),
        ca = p.path("ca.crt").display(),
    );
    sh(&tb.clients[0], &script);
    gw.wait_for("client connected", 10);
    assert_eq!(gw.stop(), 0);
    let out = gw.output();
    assert!(
        !out.lines()
            .any(|l| l.contains("INFO cvpn_gw: forged line") && !l.contains("client connected")),
        "a forged line made it into the log:\n{out}"
    );
    for raw in ['\u{1b}', '\r', '\u{0}', '\u{7}'] {
        assert!(!out.contains(raw), "raw {raw:?} in the log:\n{out}");
    }
    let line = out
        .lines()
        .find(|l| l.contains("client connected"))
        .expect("connected line");
    assert!(line.contains("\\n2026-12-03"), "{line}");
    assert!(line.len() < 2_000, "{} bytes: {line}", line.len());
}

#[test]
fn connections_table_escapes_common_names() {
    let tb = Testbed::new("cnesc", 1);
    let config = tb.write_config("", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    // cvpn-pki refuses such names; another CA tool would not.
    let profile = openssl_client(
        &tb,
        "/CN=ev$(printf '\\033')[2Jil",
        "extendedKeyUsage=clientAuth",
    );
    let _client = tb.connect(0, &profile);
    let table = ok(std::process::Command::new(bin("cvpn-gw"))
        .args(["connections", "--control"])
        .arg(tb.control_socket()));
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert!(table.contains("ev\\x1b[2Jil"), "{table}");
}

/// A client certificate signed by the testbed's CA with openssl (subject
/// and extensions as given, which cvpn-pki would not write), and a profile
/// for it.
fn openssl_client(tb: &Testbed, subject: &str, extensions: &str) -> std::path::PathBuf {
    let dir = tempfile::tempdir_in(tb.dir.path()).unwrap().keep();
    let p = &tb.pki;
    sh_ok(
        &tb.gateway,
        &format!(
            "cd {d} && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.pem \
             -subj \"{subject}\" -out r.csr 2>/dev/null && printf '%s\\n' '{extensions}' > ext && \
             openssl x509 -req -in r.csr -CA {ca} -CAkey {cakey} -set_serial 0x1234 -days 2 -extfile ext -out c.pem 2>/dev/null",
            d = dir.display(),
            ca = p.path("ca.crt").display(),
            cakey = p.path("ca.key").display(),
        ),
    );
    let profile = dir.join("client.ovpnx");
    std::fs::write(
        &profile,
        format!(
            "client\ndev tun\nproto tcp\nremote 198.18.0.1 443\nverify-x509-name vpn.example.com name\n<ca>\n{}</ca>\n<cert>\n{}</cert>\n<key>\n{}</key>\n",
            p.read("ca.crt"),
            std::fs::read_to_string(dir.join("c.pem")).unwrap(),
            std::fs::read_to_string(dir.join("k.pem")).unwrap()
        ),
    )
    .unwrap();
    profile
}

#[test]
fn certificate_without_client_auth_is_refused_and_logged_by_name() {
    let tb = Testbed::new("noeku", 1);
    let config = tb.write_config("", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    let profile = openssl_client(&tb, "/CN=noeku/OU=eng", "basicConstraints=CA:FALSE");
    let mut client = tb.spawn_client(0, &profile);
    let code = client.wait(30).expect("client did not give up");
    assert_ne!(code, 0, "{}", client.output());
    let out = gw.wait_for("InvalidPurpose", 10);
    let line = out.lines().find(|l| l.contains("InvalidPurpose")).unwrap();
    assert!(line.contains("common_name=noeku"), "{line}");
    assert!(line.contains("serial=1234"), "{line}");
    let log = std::fs::read_to_string(tb.connection_log()).unwrap();
    let refusal: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["connection-attempt-status"] == "failed")
        .expect("a failed attempt");
    assert_eq!(refusal["common-name"], "noeku", "{refusal}");
    // A revoked certificate's refusal names it too.
    let bob = tb.client_profile("bob", &[], 0);
    tb.pki.ok(&["revoke", "bob"]);
    gw.wait_for("CRL reloaded", 10);
    let mut client = tb.spawn_client(0, &bob);
    assert_ne!(client.wait(30), Some(0));
    let out = gw.wait_for("Revoked", 10);
    let line = out.lines().find(|l| l.contains("Revoked")).unwrap();
    assert!(line.contains("common_name=bob"), "{line}");
}

#[test]
fn check_fails_on_an_expired_or_foreign_crl() {
    let tb = Testbed::new("crlchk", 0);
    let config = tb.write_config("", ALL_USERS);
    let check = || {
        let mut c = std::process::Command::new(bin("cvpn-gw"));
        c.arg("check").arg("--config").arg(&config);
        c
    };
    ok(&mut check());

    // Signed by another CA: every client would be refused.
    let other = cvpn_e2e::Pki::new(&["--cn", "Other CA"]);
    let own = tb.pki.read("crl.pem");
    std::fs::write(tb.pki.path("crl.pem"), other.read("crl.pem")).unwrap();
    let err = cvpn_e2e::fails(&mut check());
    assert!(err.contains("not signed by the client CA"), "{err}");
    std::fs::write(tb.pki.path("crl.pem"), own).unwrap();

    // Past its next update (one day ahead of a CRL valid for one day).
    tb.pki.ok(&["crl", "--days", "1"]);
    ok(&mut check());
    let mut later = std::process::Command::new("faketime");
    later
        .args(["-f", "+2d"])
        .arg(bin("cvpn-gw"))
        .arg("check")
        .arg("--config")
        .arg(&config);
    let err = cvpn_e2e::fails(&mut later);
    assert!(err.contains("expired at"), "{err}");

    // No CRL at all: valid, with a loud warning.
    let text = std::fs::read_to_string(&config).unwrap();
    let no_crl: String = text
        .lines()
        .filter(|l| !l.starts_with("crl ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, no_crl).unwrap();
    let out = cvpn_e2e::run(&mut check());
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WARNING: tls.crl is not set"),
        "{out:?}"
    );
}

fn export(tb: &Testbed, out: &std::path::Path) {
    ok(std::process::Command::new(bin("cvpn-gw"))
        .args(["export-profile", "--config"])
        .arg(tb.path("endpoint.toml"))
        .arg("--pki")
        .arg(&tb.pki.dir)
        .args(["--client", "alice", "--remote", "198.18.0.1:443", "--out"])
        .arg(out));
}

#[test]
fn export_profile_never_leaves_the_key_readable() {
    let tb = Testbed::new("export", 0);
    tb.write_config("", ALL_USERS);
    tb.pki.ok(&["issue", "client", "alice"]);

    // Over an existing world-readable file.
    let out = tb.path("alice.ovpnx");
    std::fs::write(&out, "old\n").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    export(&tb, &out);
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&out).unwrap().contains("<key>"));

    // Over a symlink: the link is replaced, its target untouched.
    let target = tb.path("elsewhere");
    std::fs::write(&target, "precious\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = tb.path("linked.ovpnx");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    export(&tb, &link);
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(meta.file_type().is_file(), "still a symlink");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o644);
}

#[test]
fn clients_cannot_reach_services_on_the_gateway_host() {
    let tb = Testbed::new("gwsvc", 1);
    let config = tb.write_config("", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &[], 0);
    let _client = tb.connect(0, &profile);
    let c = &tb.clients[0];
    let listen = |ns: &str, addr: &str| {
        let mut p = Proc::spawn("listener", {
            let mut cmd = in_ns(ns, &tb.helper());
            cmd.args(["serve", "--listen", addr, "--bytes", "10", "--seed", "1"]);
            cmd.args(["--timeout", "20"]);
            cmd
        });
        p.wait_for("listening", 10);
        p
    };
    let connect = |addr: &str| {
        sh(
            c,
            &format!(
                "timeout 3 {} fetch --connect {addr} --bytes 10 --seed 1",
                tb.helper().display()
            ),
        )
    };
    // A service on the ENI address: the tunnel's packets never reach it.
    let _on_gateway = listen(&tb.gateway, &format!("{}:8080", cvpn_e2e::testbed::ENI));
    let out = connect(&format!("{}:8080", cvpn_e2e::testbed::ENI));
    assert!(!out.status.success(), "reached the gateway host: {out:?}");
    let drops = sh_ok(&tb.gateway, "nft list chain ip cvpn_gw input");
    assert!(!drops.contains("packets 0 "), "{drops}");
    // The same service on the target network is reachable.
    let _on_target = listen(&tb.target, &format!("{TARGET}:8080"));
    let out = connect(&format!("{TARGET}:8080"));
    assert!(out.status.success(), "{out:?}");
}

/// A packet frame: virtio-net header `vnet` and IPv4 `packet`.
fn packet_frame(vnet: [u8; 10], packet: &[u8]) -> Vec<u8> {
    let len = vnet.len() + packet.len();
    let mut f = vec![1, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    f.extend_from_slice(&vnet);
    f.extend_from_slice(packet);
    f
}

/// A 28-byte IPv4/UDP packet from the first client address to the target.
fn udp_packet() -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 250, 0, 2]);
    p[16..20].copy_from_slice(&[192, 168, 1, 20]);
    p[20..22].copy_from_slice(&1000u16.to_be_bytes());
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[24..26].copy_from_slice(&8u16.to_be_bytes());
    p
}

fn vnet(flags: u8, gso: u8, csum_start: u16, csum_offset: u16) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[0] = flags;
    v[1] = gso;
    v[2..4].copy_from_slice(&28u16.to_le_bytes());
    v[4..6].copy_from_slice(&1400u16.to_le_bytes());
    v[6..8].copy_from_slice(&csum_start.to_le_bytes());
    v[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    v
}

/// What the gateway's kernel counts for packets it was handed: IPv4
/// header errors and the tun device's received packets.
fn kernel_counters(ns: &str) -> (String, String) {
    let snmp = sh_ok(ns, "cat /proc/net/snmp");
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let names: Vec<&str> = ip.next().unwrap().split_whitespace().collect();
    let values: Vec<&str> = ip.next().unwrap().split_whitespace().collect();
    let at = names.iter().position(|n| *n == "InHdrErrors").unwrap();
    let rx = sh_ok(ns, "cat /sys/class/net/cvpn-gw0/statistics/rx_packets");
    (values[at].to_string(), rx.trim().to_string())
}

#[test]
fn malformed_packets_never_reach_the_kernel() {
    let tb = Testbed::new("malformed", 1);
    let config = tb.write_config("", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    tb.pki.ok(&["issue", "client", "alice"]);
    let before = kernel_counters(&tb.gateway);

    let hello = br#"{"type":"hello","version":1,"os":"x","client":"y"}"#;
    let mut bytes = vec![2, 0, 0, hello.len() as u8];
    bytes.extend_from_slice(hello);
    let plain = [0u8; 10];
    let mut bad = Vec::new();
    let mut spoil = |f: &dyn Fn(&mut Vec<u8>), v: [u8; 10]| {
        let mut p = udp_packet();
        f(&mut p);
        bad.push(packet_frame(v, &p));
    };
    spoil(&|p| p[0] = 0x4f, plain); // IHL beyond the packet
    spoil(&|p| p[2..4].copy_from_slice(&1000u16.to_be_bytes()), plain); // total length beyond
    spoil(&|p| p[2..4].copy_from_slice(&20u16.to_be_bytes()), plain); // total length below
    spoil(&|_| {}, vnet(1, 1, 20, 16)); // TCP segmentation of a UDP packet
    spoil(&|_| {}, vnet(1, 0, 0, 6)); // checksum start not at the L4 header
    spoil(&|_| {}, vnet(1, 0, 20, 16)); // TCP's checksum offset in UDP
    let cases = bad.len() as u64;
    for f in bad {
        bytes.extend_from_slice(&f);
    }
    let file = tb.path("frames.bin");
    std::fs::write(&file, &bytes).unwrap();
    let p = &tb.pki;
    sh(
        &tb.clients[0],
        &format!(
            "(cat {f}; sleep 2) | timeout 10 openssl s_client -quiet -connect 198.18.0.1:443 -tls1_3 -alpn cvpn/1 \
             -cert {cert} -key {key} -CAfile {ca} >/dev/null 2>&1",
            f = file.display(),
            cert = p.cert("alice").display(),
            key = p.key("alice").display(),
            ca = p.path("ca.crt").display(),
        ),
    );
    gw.wait_for("session ended", 10);
    let drops = &tb.connections()["drops"];
    assert_eq!(drops["malformed"], cases, "{drops}");
    assert_eq!(kernel_counters(&tb.gateway), before);

    // A real client's idle tunnel adds nothing to the counter.
    let profile = tb.export_profile("alice", 0);
    let _client = tb.connect(0, &profile);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(tb.connections()["drops"]["malformed"], cases);
}

#[test]
fn a_connect_flood_neither_fills_the_log_nor_keeps_clients_out() {
    let tb = Testbed::new("flood", 2);
    let config = tb.write_config("", ALL_USERS);
    let mut gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &[], 1);
    let flood_started = std::time::Instant::now();
    let mut flood = Proc::spawn("flood", {
        let mut cmd = in_ns(&tb.clients[0], &tb.helper());
        cmd.args(["flood", "--connect", "198.18.0.1:443", "--count", "20000"]);
        cmd
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    // A legitimate client from elsewhere gets in during the flood.
    let started = std::time::Instant::now();
    let _client = tb.connect(1, &profile);
    let took = started.elapsed();
    let flooded = flood.wait_for("flood done", 60);
    // One line per source and 10 s interval the flood lasted (and a
    // partial interval at each end): never one line per attempt.
    let intervals = flood_started.elapsed().as_secs() as usize / 10 + 2;
    assert!(flooded.contains("of 20000 connected"), "{flooded}");
    assert!(
        took < std::time::Duration::from_secs(2),
        "client took {took:?} during the flood"
    );
    // The flood's attempts are logged per source and interval.
    gw.wait_for("connection attempts refused", 15);
    let log = std::fs::read_to_string(tb.connection_log()).unwrap();
    let from_flood: Vec<&str> = log.lines().filter(|l| l.contains("198.18.0.2")).collect();
    let bytes: usize = from_flood.iter().map(|l| l.len() + 1).sum();
    assert!(
        !from_flood.is_empty() && from_flood.len() <= intervals,
        "{} lines for {intervals} intervals: {from_flood:?}",
        from_flood.len()
    );
    assert!(bytes < intervals * 800, "{bytes} bytes from the flood");
    assert!(
        from_flood
            .iter()
            .any(|l| l.contains("attempts without a client certificate")),
        "{from_flood:?}"
    );
}
