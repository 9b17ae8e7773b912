//! The tunnel's own record layer against stock rustls (tokio-rustls) on the
//! other end, in memory: data both ways in sizes that span records, key
//! updates asked for by the peer, session tickets, close_notify, and a
//! refused client (a forged record: tls_suites.rs).

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

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
