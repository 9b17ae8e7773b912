//! The datagram channel (transport_protocol = "udp"): datagrams from
//! clients are opened and judged by the same per-packet policy as the TLS
//! stream's packets; packets for a client whose datagrams keep arriving
//! leave as datagrams when they fit one. Both run on the packet thread
//! (datapath.rs).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cvpn_gw::dataplane::SessionHandle;
use cvpn_proto::datagram::{self, KIND_PROBE, MAX_DATAGRAM};
use tracing::debug;

use crate::serve::Gateway;
use crate::session::{self, Reply};

/// One datagram from `from`. Nothing a client sends is answered unless it
/// is authentic, so the socket cannot be used to reflect traffic at
/// someone else.
pub fn receive(gw: &Gateway, dgram: &mut [u8], from: SocketAddr, reply: &mut Reply) {
    let Some(s) = datagram::session_of(dgram).and_then(|id| gw.registry.by_datagram(id)) else {
        gw.drops.no_session.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(path) = &s.datagram else {
        return;
    };
    let (kind, payload) = match path.open(dgram, from, Instant::now()) {
        Ok(opened) => opened,
        Err(e) => {
            debug!(connection_id = %s.connection_id, error = %e, "datagram dropped");
            gw.drops.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if kind == KIND_PROBE {
        let mut out = [0u8; datagram::OVERHEAD];
        if let (Some(sock), Ok(len)) = (&gw.udp, path.seal(KIND_PROBE, &[], &mut out)) {
            let _ = sock.send_to(&out[..len], from);
        }
        return;
    }
    let policy = gw.policy.load();
    session::forward(gw, &s, &policy, payload, reply);
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
        let (Some(sock), Some(path)) = (&self.udp, &s.datagram) else {
            return false;
        };
        if !datagram::fits(packet) {
            return false;
        }
        let Some(peer) = path.live_peer(Instant::now()) else {
            return false;
        };
        let mut out = [0u8; MAX_DATAGRAM];
        match path.seal(datagram::KIND_PACKET, packet, &mut out) {
            // The socket is non-blocking: a full one refuses at once.
            Ok(len) => sock.send_to(&out[..len], peer).is_ok(),
            Err(_) => false,
        }
    }
}
