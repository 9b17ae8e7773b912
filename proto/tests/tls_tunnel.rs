//! The tunnel's own record layer against stock rustls (tokio-rustls) on the
//! other end, in memory: data both ways in sizes that span records, key
//! updates asked for by the peer, session tickets, close_notify, and a
//! forged record.

use std::sync::Arc;

use cvpn_pki::store::Request;
use cvpn_pki::{KeyType, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};

struct Pki {
    _dir: tempfile::TempDir,
    store: Store,
}

fn pki() -> Pki {
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(pki: &Pki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.store.ca_cert_path()).unwrap())
        .unwrap();
    Arc::new(roots)
}

fn server_config(pki: &Pki, tickets: usize) -> Arc<ServerConfig> {
    server_config_trusting(pki, pki, tickets)
}

/// The server's certificate from `pki`; clients must come from `client_ca`.
fn server_config_trusting(pki: &Pki, client_ca: &Pki, tickets: usize) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca), provider())
        .build()
        .unwrap();
    let mut c = ServerConfig::builder_with_provider(provider())
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

fn client_config(pki: &Pki) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(provider())
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

fn name() -> ServerName<'static> {
    ServerName::try_from("gw.test").unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `a` writes `data`, `b` reads exactly that.
async fn pass<A, B>(a: &mut A, b: &mut B, data: &[u8])
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

async fn ours_server_stock_client(
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

#[tokio::test]
async fn data_crosses_both_ways_between_our_server_and_rustls() {
    let pki = pki();
    let (mut server, mut client) = ours_server_stock_client(&pki).await;
    assert_eq!(server.alpn_protocol(), Some(cvpn_proto::ALPN));
    let leaf = &server.peer_certificates()[0];
    assert_eq!(
        cvpn_pki::client_identity(leaf).unwrap().common_name,
        "alice"
    );
    for len in [1, 104, 16_384, 16_385, 200_000] {
        pass(&mut client, &mut server, &pattern(len, 1)).await;
        pass(&mut server, &mut client, &pattern(len, 2)).await;
    }
    assert!(server.records_sent_under_current_key() > 10);
    // The peer updates its keys and asks us to update ours: rustls then
    // reads our records only if our key update reached it.
    client.get_mut().1.refresh_traffic_keys().unwrap();
    for _ in 0..3 {
        pass(&mut client, &mut server, &pattern(5000, 3)).await;
        pass(&mut server, &mut client, &pattern(5000, 4)).await;
    }
    assert_eq!(server.records_sent_under_current_key(), 3);
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
    server.shutdown().await.unwrap();
    assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
}

#[tokio::test]
async fn our_client_takes_data_sent_with_the_handshake_and_ignores_tickets() {
    let pki = pki();
    let (a, b) = duplex(1 << 16);
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&pki, 2));
    let server = async {
        let mut s = acceptor.accept(a).await.unwrap();
        // Sent before the client has read anything after its Finished.
        s.write_all(b"config").await.unwrap();
        s.flush().await.unwrap();
        s
    };
    let (mut server, client) = tokio::join!(
        server,
        cvpn_proto::tls::connect(b, client_config(&pki), name())
    );
    let mut client = client.unwrap();
    let mut got = [0u8; 6];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"config");
    pass(&mut client, &mut server, &pattern(70_000, 5)).await;
    pass(&mut server, &mut client, &pattern(70_000, 6)).await;
    server.get_mut().1.refresh_traffic_keys().unwrap();
    pass(&mut server, &mut client, &pattern(100, 7)).await;
    pass(&mut client, &mut server, &pattern(100, 8)).await;
    pass(&mut server, &mut client, &pattern(100, 9)).await;
}

#[tokio::test]
async fn a_forged_record_ends_the_stream_with_an_error() {
    let pki = pki();
    let (mut server, mut client) = ours_server_stock_client(&pki).await;
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend_from_slice(&[0x55; 40]);
    client.get_mut().0.write_all(&forged).await.unwrap();
    let mut buf = [0u8; 64];
    let err = server.read(&mut buf).await.unwrap_err();
    assert!(err.to_string().contains("authentication"), "{err}");
}

#[tokio::test]
async fn a_client_the_server_refuses_hears_why() {
    let pki = pki();
    let other = self::pki();
    let (a, b) = duplex(1 << 16);
    // The server trusts a different CA than the one that issued alice.
    let (server, client) = tokio::join!(
        cvpn_proto::tls::accept(a, server_config_trusting(&pki, &other, 0)),
        async {
            // The client finishes first in TLS 1.3; the refusal is an alert
            // it reads afterwards.
            let mut c = cvpn_proto::tls::connect(b, client_config(&pki), name()).await?;
            let mut buf = [0u8; 16];
            c.read(&mut buf).await.map_err(cvpn_proto::TlsError::Io)
        }
    );
    assert!(server.is_err());
    let err = client.unwrap_err().to_string();
    assert!(err.contains("received fatal alert"), "{err}");
}
