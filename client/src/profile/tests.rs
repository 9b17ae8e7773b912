use super::*;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";

fn inline(extra: &str) -> String {
    format!(
        "client\ndev tun\nproto tcp\nremote vpn.example.com 443\n{extra}\n<ca>\n{PEM}\n</ca>\n<cert>\n{PEM}\n</cert>\n<key>\n{PEM}\n</key>\n"
    )
}

fn no_files(p: &Path) -> std::io::Result<String> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no {}", p.display()),
    ))
}

fn parse_str(text: &str) -> Result<Profile, ProfileError> {
    parse(text, Path::new("/profiles"), no_files)
}

#[test]
fn inline_profile() {
    let p = parse_str(&inline("remote 198.18.0.1 8443\nremote-random\nverify-x509-name vpn.example.com name\nconnect-retry 2 20\nconnect-retry-max 5")).unwrap();
    assert_eq!(
        p.remotes,
        vec![
            Remote {
                host: "vpn.example.com".into(),
                port: 443
            },
            Remote {
                host: "198.18.0.1".into(),
                port: 8443
            }
        ]
    );
    assert!(p.remote_random);
    assert!(!p.datagram);
    assert!(parse_str(&inline("proto udp")).unwrap().datagram);
    assert!(parse_str(&inline("remote gw 1194 udp")).unwrap().datagram);
    assert_eq!(p.verify_name.as_deref(), Some("vpn.example.com"));
    assert_eq!(
        (
            p.retry_initial.as_secs(),
            p.retry_max.as_secs(),
            p.retry_limit
        ),
        (2, 20, Some(5))
    );
    assert!(p.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(p.warnings.is_empty());
}

#[test]
fn file_paths_are_relative_to_the_profile() {
    let text = "remote gw 443\nca ca.crt\ncert /abs/me.crt\nkey \"my key.pem\"\n";
    let p = parse(text, Path::new("/profiles"), |path| {
        Ok(format!("{PEM}\n# {}", path.display()))
    })
    .unwrap();
    assert!(p.ca_pem.ends_with("/profiles/ca.crt"));
    assert!(p.cert_pem.ends_with("/abs/me.crt"));
    assert!(p.key_pem.ends_with("/profiles/my key.pem"));
    let e = parse_str("remote gw\nca missing.crt\n").unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.message.contains("/profiles/missing.crt"), "{e}");
}

#[test]
fn unknown_directives_warn() {
    let p = parse_str(&inline(
        "cipher AES-256-GCM\nverb 3\n<tls-auth>\nxx\n</tls-auth>",
    ))
    .unwrap();
    assert_eq!(p.warnings.len(), 3, "{:?}", p.warnings);
    assert!(p.warnings[0].starts_with("line 5: unknown directive `cipher`"));
}

#[test]
fn malformed_lines_are_named() {
    let cases = [
        ("remote", 5, "takes 1 to 3"),
        ("remote gw 99999", 5, "bad port"),
        ("remote gw 443 sctp", 5, "expected tcp or udp"),
        ("proto udp6", 5, "expected tcp or udp"),
        ("dev tap", 5, "only tun"),
        ("verify-x509-name x subject", 5, "not supported"),
        ("connect-retry soon", 5, "not a number"),
        ("connect-retry-max -1", 5, "not a count"),
        ("client extra", 5, "takes 0"),
        ("remote \"gw", 5, "unterminated quote"),
        ("<ca>\nnot pem\n</ca>", 5, "no PEM block"),
    ];
    for (extra, line, why) in cases {
        let e = parse_str(&inline(extra)).unwrap_err();
        assert_eq!(e.line, line, "{extra}: {e}");
        assert!(e.message.contains(why), "{extra}: {e}");
    }
    let e = parse_str("remote gw\n<ca>\n-----BEGIN X-----\n").unwrap_err();
    assert!(
        e.to_string().contains("line 2: <ca> is never closed"),
        "{e}"
    );
    let e = parse_str(&inline("<ca>\n-----BEGIN X-----\n</ca>")).unwrap_err();
    assert!(e.message.contains("given twice"), "{e}");
}

#[test]
fn missing_pieces() {
    assert!(
        parse_str("client\n")
            .unwrap_err()
            .message
            .contains("no `remote")
    );
    assert!(
        parse_str("remote gw\n")
            .unwrap_err()
            .message
            .contains("<ca>")
    );
}

#[test]
fn arbitrary_text_never_panics() {
    let mut state: u32 = 12345;
    let alphabet = b"remote <>/ca\n\"#;key cert 1 x-";
    for _ in 0..5_000 {
        let text: String = (0..40)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                alphabet[(state >> 16) as usize % alphabet.len()] as char
            })
            .collect();
        let _ = parse_str(&text);
    }
}

#[test]
fn endless_files_are_refused_at_the_cap() {
    // As a hostile or careless profile names them: a device that never
    // ends, and the profile itself being one.
    let text = format!(
        "client\nremote vpn.example.com 443\n<ca>\n{PEM}\n</ca>\ncert /dev/zero\n<key>\n{PEM}\n</key>\n"
    );
    let e = parse(&text, Path::new("/"), read_capped).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("line 8"), "{msg}");
    assert!(msg.contains("/dev/zero"), "{msg}");
    assert!(msg.contains("larger than 1048576 bytes"), "{msg}");
    let e = read_capped(Path::new("/dev/zero")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}
