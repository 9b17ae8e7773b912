//! The per-packet path through the endpoint, the same for every protocol:
//! from a client, the policy judges each packet before it reaches the
//! inside (or another client); toward a client, each packet from the
//! inside finds its session by destination address.

use std::sync::Arc;
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

/// Seconds between two warnings about forged sources.
const SPOOF_WARNING_INTERVAL: u64 = 10;

/// True at most once per `SPOOF_WARNING_INTERVAL` (`last`: when the last
/// warning was due, in seconds since the Unix epoch).
fn warning_due(last: &std::sync::atomic::AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let before = last.load(Ordering::Relaxed);
    now >= before + SPOOF_WARNING_INTERVAL
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// The source of an IPv4 packet (no virtio-net header), if it is one.
#[inline]
fn ipv4_source(packet: &[u8]) -> Option<std::net::Ipv4Addr> {
    let h = packet.get(..20)?;
    Some(std::net::Ipv4Addr::new(h[12], h[13], h[14], h[15]))
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
        self.inside.steer(&session.lane);
        let groups = session.group_mask(policy);
        let verdict = policy.check(packet, session.address, &session.common_name, groups);
        let unreachable = match verdict {
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
            Verdict::Forward(RouteTarget::ClientNetwork(i)) => {
                match self.to_client_network(session, policy, i, payload) {
                    Ok(()) => return,
                    Err(why) => why,
                }
            }
            // A site's answer to a flow opened into it passes where the
            // site could not open one.
            Verdict::NoRoute | Verdict::Denied
                if ipv4_source(packet) != Some(session.address)
                    && hdr.is_sane(packet)
                    && self.inbound.answers(packet) =>
            {
                return self.forward_answer(session, policy, payload);
            }
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
                // One line per interval whatever the packet rate (a
                // client's flood must not become a log's).
                if warning_due(&self.drops.spoof_warned) {
                    warn!(connection_id = %session.connection_id,
                          common_name = %untrusted(&session.common_name), dropped_so_far = n + 1,
                          "dropped packets with a forged source address");
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

    /// Hands a packet the policy admitted to client network `index` to
    /// the session that carries it; Err: the ICMP error to answer with
    /// (no session carries it now).
    fn to_client_network(
        &self,
        from: &Session,
        policy: &Policy,
        index: usize,
        payload: &[u8],
    ) -> Result<(), Unreachable> {
        let Some(carrier) = policy
            .carriers
            .get(index)
            .and_then(|cn| self.sessions.carrier(cn))
        else {
            self.drops.no_route.fetch_add(1, Ordering::Relaxed);
            return Err(Unreachable::Net);
        };
        if std::ptr::eq(Arc::as_ptr(&carrier), from) {
            // Its own network came back to it: a routing loop at the site.
            self.drops.no_route.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.send_into_site(&carrier, payload);
        Ok(())
    }

    /// Sends a packet into the site `carrier` carries, remembering its
    /// flow so that the site may answer it.
    fn send_into_site(&self, carrier: &Session, payload: &[u8]) {
        self.inbound
            .record(&payload[VNET_HDR_LEN.min(payload.len())..]);
        if !carrier.send(payload) {
            self.drops.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends on a site's answer to a flow opened into it: to a client, a
    /// site or the target network it came from.
    fn forward_answer(&self, session: &Session, policy: &Policy, payload: &[u8]) {
        let Some(dst) = ipv4_destination(payload) else {
            return;
        };
        match policy.reply_target(dst) {
            Some(RouteTarget::Network(_)) => {
                if let Err(e) = self.inside.write(payload) {
                    debug!(error = %e, "tun write failed");
                }
            }
            Some(RouteTarget::Local) => self.deliver(payload),
            Some(RouteTarget::ClientNetwork(i)) => {
                let _ = self.to_client_network(session, policy, i, payload);
            }
            None => {
                self.drops.no_route.fetch_add(1, Ordering::Relaxed);
            }
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
            return self.deliver_into_site(dst, packet);
        };
        if !s.send(packet) {
            self.drops.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands a packet for an address that is no client's to the session
    /// carrying the client network that holds it, if any.
    fn deliver_into_site(&self, dst: std::net::Ipv4Addr, packet: &[u8]) {
        let policy = self.policy.load();
        let carrier = policy
            .client_network(dst)
            .and_then(|(_, cn)| self.sessions.carrier(cn));
        match carrier {
            Some(c) => self.send_into_site(&c, packet),
            None => {
                self.drops.no_session.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
