//! The record layer's duties after the handshake (RFC 8446 parity): what
//! a misbehaving peer sends ends the stream with the right alert, what a
//! well-behaved one sends does not, and nothing is written after
//! close_notify. Peers are crafted by sealing with the client's own keys.

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

#[path = "../tests/common/mod.rs"]
mod common;

use super::*;
use common::{client_config, name, pki, server_config};
use rustls::client::ClientConnectionData;
use rustls::server::ServerConnectionData;

type Server = TlsTunnel<DuplexStream, ServerConnectionData>;
type Client = TlsTunnel<DuplexStream, ClientConnectionData>;

async fn pair() -> (Server, Client) {
    let pki = pki();
    let (a, b) = duplex(1 << 16);
    let (s, c) = tokio::join!(
        accept(a, server_config(&pki, 0)),
        connect(b, client_config(&pki), name())
    );
    (s.unwrap(), c.unwrap())
}

/// Seals `content` as a record of type `typ` with the client's key and
/// sends it as it is.
async fn inject(c: &mut Client, typ: u8, content: &[u8]) {
    record::seal(&mut c.tx, typ, content, &mut c.wbuf).unwrap();
    c.flush().await.unwrap();
}

/// The server's read fails with `why`; the client then reads `alert`.
async fn refused(s: &mut Server, c: &mut Client, why: &str, alert: &str) {
    let mut buf = [0u8; 16];
    let err = s.read(&mut buf).await.unwrap_err().to_string();
    assert!(err.contains(why), "{err}");
    let heard = c.read(&mut buf).await.unwrap_err().to_string();
    assert!(heard.contains(alert), "{heard}");
    // And the server stays ended.
    assert!(s.read(&mut buf).await.is_err());
    assert!(s.write(b"x").await.is_err());
}

#[tokio::test]
async fn a_session_ticket_from_a_client_is_an_unexpected_message() {
    let (mut s, mut c) = pair().await;
    inject(
        &mut c,
        HANDSHAKE,
        &[NEW_SESSION_TICKET, 0, 0, 4, 0, 0, 0, 0],
    )
    .await;
    refused(
        &mut s,
        &mut c,
        "unexpected post-handshake message",
        "UnexpectedMessage",
    )
    .await;
}

#[tokio::test]
async fn a_flood_of_key_updates_ends_the_stream() {
    let (mut s, mut c) = pair().await;
    for _ in 0..=MAX_KEY_UPDATES_IN_A_ROW {
        c.key_update_owed = true;
        c.rekey_if_due().unwrap();
    }
    c.flush().await.unwrap();
    refused(&mut s, &mut c, "too many key updates", "UnexpectedMessage").await;
}

#[tokio::test]
async fn key_updates_with_data_between_them_are_fine() {
    let (mut s, mut c) = pair().await;
    let mut buf = [0u8; 2];
    for _ in 0..(2 * MAX_KEY_UPDATES_IN_A_ROW) {
        c.key_update_owed = true;
        c.write_all(b"ok").await.unwrap();
        c.flush().await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
    }
}

#[tokio::test]
async fn a_forged_record_is_answered_with_bad_record_mac() {
    let (mut s, mut c) = pair().await;
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend_from_slice(&[0x55; 40]);
    c.io.write_all(&forged).await.unwrap();
    refused(&mut s, &mut c, "authentication", "BadRecordMac").await;
}

#[tokio::test]
async fn a_malformed_key_update_is_a_decode_error() {
    let (mut s, mut c) = pair().await;
    inject(&mut c, HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 7]).await;
    refused(&mut s, &mut c, "malformed key update", "DecodeError").await;
}

#[tokio::test]
async fn user_canceled_is_a_warning_and_close_notify_follows() {
    let (mut s, mut c) = pair().await;
    inject(&mut c, ALERT, &[1, USER_CANCELED]).await;
    c.write_all(b"still here").await.unwrap();
    c.flush().await.unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    c.shutdown().await.unwrap();
    assert_eq!(s.read(&mut buf).await.unwrap(), 0);
}

#[tokio::test]
async fn nothing_is_written_after_close_notify() {
    let (mut s, mut c) = pair().await;
    c.shutdown().await.unwrap();
    let err = c.write(b"late").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).await.unwrap(), 0);
    assert!(rest.is_empty());
}
