//! OpenVPN over TCP: packets behind a 2-byte length on the stream. One
//! reader (control packets to the driver, data packets opened and
//! forwarded in place), one writer (draining the stream's outbox), and
//! the driver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};

use super::driver::{self, Start, tls_factory};
use super::{Client, Received, Wire};
use crate::endpoint::Endpoint;
use crate::endpoint::forward::reply_buffer;
use crate::outside::Outside;
use crate::protocol::openvpn::control::{Control, MAX_CONTROL_PACKET};
use crate::protocol::openvpn::packet::{self, ControlPacket, HARD_RESET_CLIENT_V2};

/// An OpenVPN packet on TCP is at most this long (the length field's
/// range; a real one is under 2 KB).
const MAX_FRAME: usize = u16::MAX as usize;
/// A packet from a client is at most this long: a data packet of the
/// pushed tun-mtu (1500) with its overhead, or a control packet, with room
/// to spare. A longer length ends the connection before anything of it is
/// buffered (OpenVPN's server drops such a stream too).
const MAX_CLIENT_FRAME: usize = 4096;
/// Bytes queued for one client at most; past it packets are dropped, as
/// a full interface queue would.
const OUTBOX_LIMIT: usize = 2 * 1024 * 1024;
/// A client sends its reset as soon as it is connected: a connection
/// silent this long gives its handshake slot back (the hand window of 60 s
/// starts with the reset).
const FIRST_PACKET_TIMEOUT: Duration = Duration::from_secs(20);
/// Control packets waiting for the driver at most (each at most
/// MAX_CONTROL_PACKET bytes).
const CONTROL_QUEUE: usize = 16;

/// A client's stream outbox: length-prefixed packets.
#[derive(Default)]
pub struct StreamWire {
    buf: std::sync::Mutex<Vec<u8>>,
    notify: Notify,
    closed: AtomicBool,
}

impl Wire for StreamWire {
    fn send(&self, packet: &[u8]) -> bool {
        if self.closed.load(Ordering::Relaxed) || packet.len() > MAX_FRAME {
            return false;
        }
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        if buf.len() + packet.len() + 2 > OUTBOX_LIMIT {
            return false;
        }
        let was_empty = buf.is_empty();
        buf.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        buf.extend_from_slice(packet);
        drop(buf);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }
}

impl StreamWire {
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Writes what is queued until closed and drained, or a write fails.
    async fn drain<W: AsyncWrite + Unpin>(&self, mut wr: W) {
        let mut spare = Vec::new();
        loop {
            let notified = self.notify.notified();
            {
                let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut *buf, &mut spare);
            }
            if spare.is_empty() {
                if self.closed.load(Ordering::Relaxed) {
                    let _ = wr.shutdown().await;
                    return;
                }
                notified.await;
                continue;
            }
            if wr.write_all(&spare).await.is_err() {
                return;
            }
            spare.clear();
        }
    }
}

/// Reads one length-prefixed packet into `buf` (after whatever it holds);
/// None at the end of the stream, on a zero length or one over
/// MAX_CLIENT_FRAME.
async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Option<usize> {
    while buf.len() < 2 {
        if rd.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if len == 0 || len > MAX_CLIENT_FRAME {
        return None;
    }
    while buf.len() < 2 + len {
        buf.reserve(2 + len - buf.len());
        if rd.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    Some(len)
}

/// Serves an OpenVPN client on an accepted TCP connection whose first
/// byte said it is one.
pub async fn serve(out: Outside, tcp: TcpStream, device: SocketAddr, permit: OwnedSemaphorePermit) {
    let ep = out.ep.clone();
    let started = time::OffsetDateTime::now_utc();
    let (mut rd, wr) = tcp.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let first = tokio::time::timeout(FIRST_PACKET_TIMEOUT, read_frame(&mut rd, &mut buf)).await;
    let Ok(Some(len)) = first else {
        return ep.failed_without_certificate(device, "no OpenVPN reset");
    };
    let mut wrapping = out.openvpn.wrapping();
    let first = buf[2..2 + len].to_vec();
    let plain = match &mut wrapping {
        Some(w) => match w.unwrap(&first) {
            Some(p) => p,
            // Not made with the tls-crypt key: no answer at all.
            None => return,
        },
        None => first,
    };
    let reset = match ControlPacket::parse(&plain) {
        Ok(p) if p.opcode == HARD_RESET_CLIENT_V2 && p.key_id == 0 => p,
        _ => return ep.failed_without_certificate(device, "not an OpenVPN client reset"),
    };
    let mut own = [0u8; 8];
    if getrandom::fill(&mut own).is_err() {
        return ep.failed_without_certificate(device, "no randomness for a session id");
    }
    let wire = Arc::new(StreamWire::default());
    let control =
        match Control::from_reset(&reset, own, tls_factory(&ep), std::time::Instant::now()) {
            Ok(c) => c,
            Err(e) => return ep.failed_without_certificate(device, &e),
        };
    buf.advance(2 + len);
    let Some(client) = out.openvpn.add(|id| Client::new(id, wire.clone())) else {
        return ep.failed_without_certificate(device, "no free OpenVPN peer id");
    };
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    let reader = tokio::spawn(read_loop(ep.clone(), client.clone(), rd, buf, tx));
    let writer = tokio::spawn({
        let wire = wire.clone();
        async move { wire.drain(wr).await }
    });
    let start = Start {
        device,
        started,
        udp: false,
        permit: Some(permit),
        wrapping,
        on_admit: None,
    };
    driver::drive(ep, client.clone(), control, rx, start).await;
    out.openvpn.remove(client.peer_id);
    wire.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    reader.abort();
}

/// Reads packets until the stream ends: control packets go to the driver
/// (dropping `tx` tells it the stream ended), data packets are opened and
/// forwarded here.
async fn read_loop<R: AsyncRead + Unpin>(
    ep: Arc<Endpoint>,
    client: Arc<Client>,
    mut rd: R,
    mut buf: BytesMut,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let mut reply = reply_buffer();
    while let Some(len) = read_frame(&mut rd, &mut buf).await {
        let frame = &mut buf[2..2 + len];
        let (opcode, _) = packet::split_first_byte(frame[0]);
        if packet::is_data(opcode) {
            let exit = client.receive_data(&ep, frame, &mut reply);
            ep.after_forwarding();
            if exit == Received::Exit {
                return;
            }
        } else if frame.len() > MAX_CONTROL_PACKET {
            // No client sends larger ones: dropped, never queued.
            ep.drops.malformed.fetch_add(1, Ordering::Relaxed);
        } else if tx.send(frame.to_vec()).await.is_err() {
            return;
        }
        buf.advance(2 + len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_over_the_client_limit_end_the_stream_unread() {
        let mut ok = vec![0, 3, 1, 2, 3];
        ok.extend_from_slice(&[0x10, 0x01]);
        ok.extend_from_slice(&[7; 64]);
        let mut rd = &ok[..];
        let mut buf = BytesMut::new();
        assert_eq!(read_frame(&mut rd, &mut buf).await, Some(3));
        buf.advance(5);
        // 4097 announced: refused before the rest is read.
        assert_eq!(read_frame(&mut rd, &mut buf).await, None);
        assert!(buf.len() <= 66, "{}", buf.len());
        let mut rd = &[0u8, 0][..];
        assert_eq!(read_frame(&mut rd, &mut BytesMut::new()).await, None);
    }
}
