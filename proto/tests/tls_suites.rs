//! The tunnel's record layer against stock peers for each TLS 1.3 cipher
//! suite: rustls (tokio-rustls) in memory, and openssl's s_server and
//! s_client over loopback; and a rekey limit crossed with data intact.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

#[tokio::test]
async fn every_suite_carries_data_both_ways_with_rustls() {
    let pki = pki();
    for (suite, name_of) in tls13_suites() {
        // Our server, a rustls client that offers only this suite.
        let (a, b) = duplex(1 << 16);
        let connector = tokio_rustls::TlsConnector::from(client_config_with(&pki, Some(suite)));
        let (server, client) = tokio::join!(
            cvpn_proto::tls::accept(a, server_config(&pki, 0)),
            connector.connect(name(), b)
        );
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        let negotiated = client.get_ref().1.negotiated_cipher_suite().unwrap();
        assert_eq!(negotiated.suite(), suite.suite(), "{name_of}");
        for len in [1, 16_385, 100_000] {
            pass(&mut client, &mut server, &pattern(len, 1)).await;
            pass(&mut server, &mut client, &pattern(len, 2)).await;
        }
        // Our client, a rustls server that takes only this suite.
        let (a, b) = duplex(1 << 16);
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config_with(&pki, suite));
        let (server, client) = tokio::join!(
            acceptor.accept(a),
            cvpn_proto::tls::connect(b, client_config(&pki), name())
        );
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        pass(&mut client, &mut server, &pattern(70_000, 3)).await;
        pass(&mut server, &mut client, &pattern(70_000, 4)).await;
    }
}

#[tokio::test]
async fn a_crossed_rekey_limit_updates_keys_and_rustls_reads_on() {
    let pki = pki();
    let (mut server, mut client) = ours_server_stock_client(&pki).await;
    server.set_rekey_limit(3);
    for i in 0..20u8 {
        pass(&mut server, &mut client, &pattern(1000, i)).await;
        assert!(server.records_sent_under_current_key() <= 3);
    }
    pass(&mut client, &mut server, &pattern(5000, 9)).await;
}

#[tokio::test]
async fn a_rustls_peer_hears_bad_record_mac_for_a_forged_record() {
    let pki = pki();
    let (mut server, mut client) = ours_server_stock_client(&pki).await;
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend_from_slice(&[0x55; 40]);
    client.get_mut().0.write_all(&forged).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(server.read(&mut buf).await.is_err());
    let heard = client.read(&mut buf).await.unwrap_err().to_string();
    assert!(heard.contains("BadRecordMac"), "{heard}");
}

/// A free loopback port for openssl to listen on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl_files(pki: &Pki) -> [String; 3] {
    [
        pki.store.ca_cert_path().display().to_string(),
        pki.store.cert_path("gw").display().to_string(),
        pki.store.key_path("gw").display().to_string(),
    ]
}

#[tokio::test]
async fn our_client_against_openssl_s_server_for_every_suite() {
    let pki = pki();
    let [ca, cert, key] = openssl_files(&pki);
    for (suite, openssl_name) in tls13_suites() {
        let port = free_port();
        // -rev: each line comes back reversed, so data crossed both ways.
        let mut server = Command::new("openssl")
            .args([
                "s_server", "-tls1_3", "-rev", "-naccept", "1", "-Verify", "1",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .args(["-ciphersuites", openssl_name, "-CAfile", &ca])
            .args(["-cert", &cert, "-key", &key])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server (package openssl)");
        let mut ready = String::new();
        let mut out = BufReader::new(server.stdout.take().unwrap());
        while !ready.contains("ACCEPT") {
            assert!(out.read_line(&mut ready).unwrap() > 0, "s_server: {ready}");
        }
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let config = client_config_with(&pki, Some(suite));
        let mut c = cvpn_proto::tls::connect(tcp, config, name()).await.unwrap();
        c.write_all(b"tunnel over openssl\n").await.unwrap();
        c.flush().await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            let mut b = [0u8; 64];
            let n = c.read(&mut b).await.unwrap();
            assert!(n > 0, "{openssl_name}: closed early");
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, b"lssnepo revo lennut\n", "{openssl_name}");
        let _ = c.shutdown().await;
        let _ = server.kill();
        let _ = server.wait();
    }
}

#[tokio::test]
async fn openssl_s_client_against_our_server_for_every_suite() {
    let pki = pki();
    let [ca, _, _] = openssl_files(&pki);
    let alice_cert = pki.store.cert_path("alice").display().to_string();
    let alice_key = pki.store.key_path("alice").display().to_string();
    for (_, openssl_name) in tls13_suites() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = Command::new("openssl")
            .args(["s_client", "-tls1_3", "-quiet", "-alpn", "cvpn/1"])
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .args(["-ciphersuites", openssl_name, "-CAfile", &ca])
            .args(["-cert", &alice_cert, "-key", &alice_key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client (package openssl)");
        let (tcp, _) = listener.accept().await.unwrap();
        let mut s = cvpn_proto::tls::accept(tcp, server_config(&pki, 0))
            .await
            .unwrap();
        assert_eq!(s.alpn_protocol(), Some(cvpn_proto::ALPN));
        let mut stdin = client.stdin.take().unwrap();
        stdin.write_all(b"from openssl\n").unwrap();
        stdin.flush().unwrap();
        let mut got = [0u8; 13];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from openssl\n", "{openssl_name}");
        s.write_all(b"from cvpn\n").await.unwrap();
        s.flush().await.unwrap();
        let mut line = String::new();
        BufReader::new(client.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "from cvpn\n", "{openssl_name}");
        s.shutdown().await.unwrap();
        drop(stdin);
        let _ = client.kill();
        let _ = client.wait();
    }
}
