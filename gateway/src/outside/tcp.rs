//! The TLS listener: admits a connection only within the bounds on
//! unauthenticated work (a rate of new handshakes per source address, a
//! bound on handshakes in progress), runs the handshake, and hands
//! authenticated clients to their session. Failed attempts without a
//! certificate are logged as one line per source per interval.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use cvpn_proto::text::untrusted;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;

use super::Outside;
use super::stream::{self, Accepted, refuse};
use crate::endpoint::FAILURE_INTERVAL;
use crate::endpoint::connlog::{Event, Record, new_connection_id};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until aborted; an accept error (out of
/// descriptors and the like) pauses it, never ends it.
pub async fn accept_loop(out: Outside, listener: TcpListener) -> Result<()> {
    let ep = &out.ep;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let within_rate = ep
            .source_rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(peer.ip(), Instant::now());
        if !within_rate {
            // Refused before any TLS work: closing costs nothing.
            ep.failed_without_certificate(peer, "over the source address's handshake rate");
            continue;
        }
        let Ok(permit) = ep.handshakes.clone().try_acquire_owned() else {
            ep.failed_without_certificate(peer, "too many handshakes in progress");
            continue;
        };
        tokio::spawn(demultiplex(out.clone(), tcp, peer, permit));
    }
}

/// A TLS record starts with this byte (handshake); an OpenVPN packet on
/// TCP with the high byte of its length, which is 0 for a reset.
const TLS_HANDSHAKE: u8 = 0x16;

/// Tells cvpn/1 (TLS from the first byte) from OpenVPN (a 2-byte length,
/// then the reset) and hands the connection to its shell.
async fn demultiplex(out: Outside, tcp: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => handle_connection(out, tcp, peer, permit).await,
        Ok(Ok(1)) => {
            let _ = tcp.set_nodelay(true);
            super::openvpn::tcp::serve(out, tcp, peer, permit).await
        }
        Ok(_) => out
            .ep
            .failed_without_certificate(peer, "connection closed before any byte"),
        Err(_) => out
            .ep
            .failed_without_certificate(peer, "no byte within the handshake timeout"),
    }
}

async fn handle_connection(
    out: Outside,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let ep = &out.ep;
    let start = time::OffsetDateTime::now_utc();
    let fail = |reason: String, cn: Option<String>| Record {
        connection_id: new_connection_id(),
        common_name: cn,
        client_ip: None,
        device: peer,
        udp: false,
        start,
        event: Event::Failed { reason },
    };
    let tcp = match cvpn_proto::Transport::new(tcp) {
        Ok(t) => t,
        Err(e) => {
            let why = format!("cannot tune the connection: {e}");
            return ep.failed_without_certificate(peer, &why);
        }
    };
    let (config, presented) = match ep.tls.load().for_connection() {
        Ok(c) => c,
        Err(e) => return ep.log(&fail(e.to_string(), None)),
    };
    let handshake = cvpn_proto::tls::accept(tcp, config);
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
    drop(permit);
    let seen = presented.lock().unwrap_or_else(|p| p.into_inner()).take();
    let mut stream = match (outcome, seen) {
        (Ok(Ok(s)), _) => s,
        (Ok(Err(e)), Some(seen)) => {
            // A certificate was presented: logged one by one, by name.
            let reason = format!("TLS handshake failed: {e}");
            warn!(device_ip = %peer, common_name = %untrusted(seen.common_name.as_deref().unwrap_or("NA")),
                  serial = %seen.serial.as_deref().unwrap_or("NA"), %reason, "connection refused");
            return ep.log(&fail(reason, seen.common_name));
        }
        (Ok(Err(e)), None) => {
            return ep.failed_without_certificate(peer, &format!("TLS handshake failed: {e}"));
        }
        (Err(_), _) => return ep.failed_without_certificate(peer, "TLS handshake timed out"),
    };
    if stream.alpn_protocol() != Some(cvpn_proto::ALPN) {
        let why = "client did not negotiate ALPN cvpn/1 (not a cvpn client?)".to_string();
        return refuse(ep, &mut stream, fail(why, None)).await;
    }
    let identity = match stream
        .peer_certificates()
        .first()
        .map(|c| cvpn_pki::client_identity(c))
    {
        Some(Ok(id)) => id,
        Some(Err(e)) => return refuse(ep, &mut stream, fail(e.to_string(), None)).await,
        None => {
            let why = "no client certificate".to_string();
            return refuse(ep, &mut stream, fail(why, None)).await;
        }
    };
    stream::run(
        out.clone(),
        stream,
        Accepted {
            identity,
            device: peer,
            start,
        },
    )
    .await;
}

/// Writes the failed attempts without a certificate once per interval:
/// one line per source, with the count.
pub async fn failure_logger(ep: Arc<crate::endpoint::Endpoint>) -> Result<()> {
    loop {
        tokio::time::sleep(FAILURE_INTERVAL).await;
        ep.flush_failures();
    }
}
