//! A real mutual-TLS 1.3 handshake over loopback between rustls peers using
//! what `cvpn-pki` issued: the server requires a client certificate checked
//! against ca.crt and crl.pem.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use cvpn_e2e::Pki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

fn roots(ca: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).unwrap();
    }
    Arc::new(roots)
}

fn server_config(pki: &Pki, server: &str) -> Arc<ServerConfig> {
    let crl = CertificateRevocationListDer::from_pem_file(pki.path("crl.pem")).unwrap();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&pki.path("ca.crt")), provider())
            .with_crls(vec![crl])
            .build()
            .unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&pki.cert(server)),
            PrivateKeyDer::from_pem_file(pki.key(server)).unwrap(),
        )
        .unwrap();
    Arc::new(config)
}

fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(ca));
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certs(cert), PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Runs one handshake and a round trip; returns the server's verdict
/// (Ok with the client's CN, or the TLS error).
fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = thread::spawn(move || -> Result<String, String> {
        let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let conn = ServerConnection::new(server).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, sock);
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        assert_eq!(
            tls.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        tls.write_all(b"world").map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())?;
        let peer = tls
            .conn
            .peer_certificates()
            .ok_or("no client certificate")?;
        let id = cvpn_pki::client_identity(&peer[0]).map_err(|e| e.to_string())?;
        Ok(id.common_name)
    });
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let name = ServerName::try_from("vpn.example.com").unwrap();
    let conn = ClientConnection::new(client, name).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    let client_result = tls
        .write_all(b"hello")
        .and_then(|()| tls.flush())
        .and_then(|()| {
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).map(|()| buf)
        });
    drop(tls);
    let server_result = server_side.join().unwrap();
    if server_result.is_ok() {
        assert_eq!(&client_result.unwrap(), b"world");
    }
    server_result
}

#[test]
fn mutual_tls_accepts_and_refuses() {
    for key_type in ["ecdsa-p256", "ed25519", "rsa-2048"] {
        let pki = Pki::new(&["--key-type", key_type]);
        pki.ok(&["issue", "server", "vpn.example.com"]);
        pki.ok(&["issue", "client", "alice", "--group", "eng"]);
        let server = server_config(&pki, "vpn.example.com");
        let ca = pki.path("ca.crt");
        let alice = client_config(&ca, Some((&pki.cert("alice"), &pki.key("alice"))));
        assert_eq!(
            handshake(server, alice),
            Ok("alice".to_string()),
            "{key_type}"
        );
    }
}

#[test]
fn refused_client_certificates() {
    let pki = Pki::new(&[]);
    pki.ok(&["issue", "server", "vpn.example.com"]);
    pki.ok(&["issue", "client", "alice"]);
    pki.ok(&["issue", "client", "mallory"]);
    pki.ok(&["revoke", "mallory"]);
    let other = Pki::new(&["--cn", "Other CA"]);
    other.ok(&["issue", "client", "alice"]);
    let ca = pki.path("ca.crt");
    let server = || server_config(&pki, "vpn.example.com");

    let expired = expired_client(&pki);
    let cases: Vec<(&str, Arc<ClientConfig>, &str)> = vec![
        (
            "no certificate",
            client_config(&ca, None),
            "peer sent no certificates",
        ),
        (
            "another CA",
            client_config(&ca, Some((&other.cert("alice"), &other.key("alice")))),
            "UnknownIssuer",
        ),
        (
            "revoked",
            client_config(&ca, Some((&pki.cert("mallory"), &pki.key("mallory")))),
            "Revoked",
        ),
        (
            "server certificate as client certificate",
            client_config(
                &ca,
                Some((&pki.cert("vpn.example.com"), &pki.key("vpn.example.com"))),
            ),
            "does not allow extended key usage for client authentication",
        ),
        (
            "expired",
            client_config(&ca, Some((&expired.0, &expired.1))),
            "expired",
        ),
    ];
    for (what, client, reason) in cases {
        let verdict = handshake(server(), client);
        let err = verdict.expect_err(what);
        assert!(
            err.contains(reason),
            "{what}: expected {reason:?} in {err:?}"
        );
    }
    // The good client still gets in with the same server configuration.
    let alice = client_config(&ca, Some((&pki.cert("alice"), &pki.key("alice"))));
    assert_eq!(handshake(server(), alice), Ok("alice".into()));
}

/// A client certificate of the right CA whose validity ended yesterday,
/// signed with the CA's own key read from the directory.
fn expired_client(pki: &Pki) -> (std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let ca_key = KeyPair::from_pem(&pki.read("ca.key")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&pki.read("ca.crt"), ca_key).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "late");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(30);
    p.not_after = now - time::Duration::days(1);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    let cert_path = pki.path("late.crt");
    let key_path = pki.path("late.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}
