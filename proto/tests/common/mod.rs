//! What the TLS tests share: a CA with a server and a client certificate,
//! rustls configurations for either end (optionally one cipher suite
//! only), and data checks.
#![allow(dead_code)]

use std::sync::Arc;

use cvpn_pki::store::Request;
use cvpn_pki::{KeyType, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};

pub struct Pki {
    _dir: tempfile::TempDir,
    pub store: Store,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    store.init("Test CA", 30, KeyType::EcdsaP256).unwrap();
    let server = Request::Server {
        dns: &["gw.test".to_string()],
        ips: &[],
    };
    store.issue("gw", server, 30, None).unwrap();
    store
        .issue("alice", Request::Client { groups: &[] }, 30, None)
        .unwrap();
    Pki { _dir: dir, store }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    provider_for(None)
}

/// The default provider, or one offering only `suite`.
pub fn provider_for(suite: Option<SupportedCipherSuite>) -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(s) = suite {
        p.cipher_suites = vec![s];
    }
    Arc::new(p)
}

/// The three TLS 1.3 cipher suites, as rustls and openssl name them.
pub fn tls13_suites() -> [(SupportedCipherSuite, &'static str); 3] {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    [
        (cs::TLS13_AES_128_GCM_SHA256, "TLS_AES_128_GCM_SHA256"),
        (cs::TLS13_AES_256_GCM_SHA384, "TLS_AES_256_GCM_SHA384"),
        (
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            "TLS_CHACHA20_POLY1305_SHA256",
        ),
    ]
}

pub fn roots(pki: &Pki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.store.ca_cert_path()).unwrap())
        .unwrap();
    Arc::new(roots)
}

pub fn server_config(pki: &Pki, tickets: usize) -> Arc<ServerConfig> {
    server_config_trusting(pki, pki, tickets)
}

/// The server's certificate from `pki`; clients must come from `client_ca`.
pub fn server_config_trusting(pki: &Pki, client_ca: &Pki, tickets: usize) -> Arc<ServerConfig> {
    server_config_of(pki, client_ca, None, tickets)
}

/// A server configuration offering only `suite`.
pub fn server_config_with(pki: &Pki, suite: SupportedCipherSuite) -> Arc<ServerConfig> {
    server_config_of(pki, pki, Some(suite), 0)
}

fn server_config_of(
    pki: &Pki,
    client_ca: &Pki,
    suite: Option<SupportedCipherSuite>,
    tickets: usize,
) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca), provider())
        .build()
        .unwrap();
    let mut c = ServerConfig::builder_with_provider(provider_for(suite))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_file(pki.store.cert_path("gw")).unwrap()],
            PrivateKeyDer::from_pem_file(pki.store.key_path("gw")).unwrap(),
        )
        .unwrap();
    c.enable_secret_extraction = true;
    c.send_tls13_tickets = tickets;
    c.alpn_protocols = vec![cvpn_proto::ALPN.to_vec()];
    Arc::new(c)
}

pub fn client_config(pki: &Pki) -> Arc<ClientConfig> {
    client_config_with(pki, None)
}

/// A client configuration offering only `suite` (all with None).
pub fn client_config_with(pki: &Pki, suite: Option<SupportedCipherSuite>) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(provider_for(suite))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(pki))
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(pki.store.cert_path("alice")).unwrap()],
            PrivateKeyDer::from_pem_file(pki.store.key_path("alice")).unwrap(),
        )
        .unwrap();
    c.enable_secret_extraction = true;
    c.alpn_protocols = vec![cvpn_proto::ALPN.to_vec()];
    Arc::new(c)
}

pub fn name() -> ServerName<'static> {
    ServerName::try_from("gw.test").unwrap()
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `a` writes `data`, `b` reads exactly that.
pub async fn pass<A, B>(a: &mut A, b: &mut B, data: &[u8])
where
    A: AsyncWrite + Unpin,
    B: AsyncRead + Unpin,
{
    let send = async {
        a.write_all(data).await.unwrap();
        a.flush().await.unwrap();
    };
    let mut got = vec![0u8; data.len()];
    let recv = b.read_exact(&mut got);
    let (_, r) = tokio::join!(send, recv);
    r.unwrap();
    assert!(got == data, "bytes changed in transit");
}

pub async fn ours_server_stock_client(
    pki: &Pki,
) -> (
    cvpn_proto::TlsTunnel<DuplexStream, rustls::server::ServerConnectionData>,
    tokio_rustls::client::TlsStream<DuplexStream>,
) {
    let (a, b) = duplex(1 << 16);
    let connector = tokio_rustls::TlsConnector::from(client_config(pki));
    let (server, client) = tokio::join!(
        cvpn_proto::tls::accept(a, server_config(pki, 0)),
        connector.connect(name(), b)
    );
    (server.unwrap(), client.unwrap())
}
