//! The datagram channel's socket (transport_protocol = "udp"): datagrams
//! from clients are opened and judged by the same per-packet policy as the
//! TLS stream's packets; packets for a client whose datagrams keep arriving
//! leave as datagrams when they fit one, straight from the tun reader.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use cvpn_gw::dataplane::SessionHandle;
use cvpn_proto::VNET_HDR_LEN;
use cvpn_proto::datagram::{self, KIND_PACKET, KIND_PROBE, MAX_DATAGRAM};
use tracing::debug;

use crate::serve::Gateway;
use crate::session::{self, Reply};

/// Reads datagrams until the gateway stops. Nothing a client sends is
/// answered unless it is authentic, so the socket cannot be used to
/// reflect traffic at someone else.
pub async fn datagram_reader(gw: Arc<Gateway>) -> Result<()> {
    let Some(udp) = &gw.udp else {
        return Ok(());
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut reply: Reply = [0u8; VNET_HDR_LEN + cvpn_gw::icmp::MAX_REPLY];
    let mut tun_buf = vec![0u8; cvpn_proto::MAX_PACKET_FRAME];
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors for earlier sends surface here; the socket
                // itself stays usable.
                debug!(error = %e, "UDP receive");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let dgram = &mut buf[..n];
        let Some(s) = datagram::session_of(dgram).and_then(|id| gw.registry.by_datagram(id)) else {
            gw.drops.no_session.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(path) = &s.datagram else {
            continue;
        };
        let (kind, payload) = match path.open(dgram, from, Instant::now()) {
            Ok(opened) => opened,
            Err(e) => {
                debug!(connection_id = %s.connection_id, error = %e, "datagram dropped");
                gw.drops.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if kind == KIND_PROBE {
            let mut out = [0u8; datagram::OVERHEAD];
            if let Ok(len) = path.seal(KIND_PROBE, &[], &mut out) {
                let _ = udp.try_send_to(&out[..len], from);
            }
            continue;
        }
        let policy = gw.policy.load();
        session::forward(&gw, &s, &policy, payload, &mut reply).await;
        take_replies(&gw, &mut tun_buf);
    }
}

/// Packets taken from the tun device after a datagram's tun write.
const REPLIES_AT_ONCE: usize = 8;

/// The kernel forwards a tun write before the write returns, so a nearby
/// host's reply (a ping, an ACK) is often queued already: sending it now, as
/// a datagram from this task, saves the tun reader's wake-up on the round
/// trip (6 µs of idle RTT in 5 of 5 interleaved rounds, bench/README.md).
/// The tun reader handles whatever is left. Should it be reading at the
/// same moment, two packets of one flow may reach the client out of order,
/// as they may on any UDP path.
fn take_replies(gw: &Gateway, buf: &mut [u8]) {
    for _ in 0..REPLIES_AT_ONCE {
        let Ok(n) = gw.tun.recv_now(buf) else {
            return;
        };
        gw.deliver(&buf[..n]);
    }
}

impl Gateway {
    /// Hands one packet for a client (virtio-net header and IP packet) to
    /// its session: as a datagram if it can go as one, else on the stream.
    pub fn deliver(&self, packet: &[u8]) {
        cvpn_gw::dataplane::deliver(&self.registry, &self.drops, packet, |s, p| {
            self.send_datagram(s, p)
        });
    }

    /// Sends one packet read from the tun device to its session as a
    /// datagram; false if it must take the TLS stream (too big, an offload
    /// train, no live datagram path, or the socket is full).
    pub fn send_datagram(&self, s: &SessionHandle, packet: &[u8]) -> bool {
        let (Some(udp), Some(path)) = (&self.udp, &s.datagram) else {
            return false;
        };
        if !datagram::fits(packet) {
            return false;
        }
        let Some(peer) = path.live_peer(Instant::now()) else {
            return false;
        };
        let mut out = [0u8; MAX_DATAGRAM];
        match path.seal(KIND_PACKET, packet, &mut out) {
            Ok(len) => udp.try_send_to(&out[..len], peer).is_ok(),
            Err(_) => false,
        }
    }
}
