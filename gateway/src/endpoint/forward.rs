//! The per-packet path through the endpoint, the same for every protocol:
//! from a client, the policy judges each packet before it reaches the
//! inside (or another client); toward a client, each packet from the
//! inside finds its session by destination address.

use std::sync::atomic::Ordering;

use cvpn_proto::text::untrusted;
use cvpn_proto::{VNET_HDR_LEN, vnet};
use tracing::{debug, warn};

use super::Endpoint;
use super::session::{Counters, Session};
use crate::config::RouteTarget;
use crate::icmp::{self, Unreachable};
use crate::policy::{Policy, Verdict};

/// Room for an ICMP error behind a virtio-net header: the caller's
/// scratch buffer, so that no packet costs an allocation.
pub type Reply = [u8; VNET_HDR_LEN + icmp::MAX_REPLY];

/// A zeroed reply buffer.
pub fn reply_buffer() -> Reply {
    [0u8; VNET_HDR_LEN + icmp::MAX_REPLY]
}

/// The IPv4 destination of a packet behind its virtio-net header, if it
/// is one.
#[inline]
pub fn ipv4_destination(payload: &[u8]) -> Option<std::net::Ipv4Addr> {
    let h = payload.get(VNET_HDR_LEN..VNET_HDR_LEN + 20)?;
    (h[0] >> 4 == 4).then(|| std::net::Ipv4Addr::new(h[16], h[17], h[18], h[19]))
}

impl Endpoint {
    /// Applies the policy to one packet from `session`'s client (virtio-net
    /// header and IP packet) and sends it on, or answers it with ICMP.
    /// `policy` is loaded once per batch by the caller.
    pub fn forward(&self, session: &Session, policy: &Policy, payload: &[u8], reply: &mut Reply) {
        let Some((hdr, packet)) = vnet::split(payload) else {
            self.drops.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let c = &session.counters;
        Counters::add(&c.ingress_bytes, &c.ingress_packets, packet.len());
        let groups = session.group_mask(policy);
        let unreachable = match policy.check(packet, session.address, groups) {
            // A segmentation-offload packet is many segments behind one IP
            // header: the addresses judged are those of every segment.
            Verdict::Forward(_) if !hdr.is_sane(packet) => {
                self.drops.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Forward(RouteTarget::Network(_)) => {
                if let Err(e) = self.inside.write(payload) {
                    debug!(error = %e, "tun write failed");
                }
                return;
            }
            Verdict::Forward(RouteTarget::Local) => return self.deliver(payload),
            Verdict::NoRoute => {
                self.drops.no_route.fetch_add(1, Ordering::Relaxed);
                Unreachable::Net
            }
            Verdict::Denied => {
                self.drops.denied.fetch_add(1, Ordering::Relaxed);
                Unreachable::AdminProhibited
            }
            Verdict::Spoofed => {
                let n = self.drops.spoofed.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    warn!(connection_id = %session.connection_id,
                          common_name = %untrusted(&session.common_name),
                          "dropped a packet with a forged source address");
                }
                return;
            }
            Verdict::Malformed => {
                self.drops.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Ipv6 => {
                self.drops.ipv6.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        // The reply goes behind a plain virtio-net header (the buffer's
        // first bytes, always zero).
        let (_, body) = reply.split_at_mut(VNET_HDR_LEN);
        let Ok(body) = <&mut [u8; icmp::MAX_REPLY]>::try_from(body) else {
            return;
        };
        if let Some(n) = icmp::unreachable(body, packet, self.gateway_addr, unreachable) {
            session.send(&reply[..VNET_HDR_LEN + n]);
        }
    }

    /// Called by a session's shell after it forwarded a batch: replies
    /// the kernel already queued leave from the caller's thread.
    pub fn after_forwarding(&self) {
        self.inside.take_replies(&mut |p| self.deliver(p));
    }

    /// Hands one packet for a client (virtio-net header and IP packet) to
    /// the session that owns its destination.
    #[inline]
    pub fn deliver(&self, packet: &[u8]) {
        // Not IPv4: the kernel's own IPv6 chatter as the device comes up,
        // before its IPv6 is disabled. No client sent it, so no counter of
        // theirs moves; the tunnel carries IPv4 only.
        let Some(dst) = ipv4_destination(packet) else {
            return;
        };
        let Some(s) = self.sessions.get(dst) else {
            self.drops.no_session.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !s.send(packet) {
            self.drops.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
