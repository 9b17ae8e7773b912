//! The data path between the tun device and the sessions.
//!
//! Toward a client, packets are framed straight into the session's outbox
//! (one growing buffer, swapped with a spare by the writer), so a burst of
//! queued packets leaves in one TLS record and one write, and no packet
//! costs an allocation. From a client, every frame in a read is decoded in
//! place and judged by the policy before it reaches the tun device.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::BytesMut;
use cvpn_proto::{Control, VNET_HDR_LEN, encode_control, encode_packet};
use tokio::sync::Notify;

use crate::connlog::{Event, Record, Traffic};
use crate::datagram::DatagramPath;
use crate::policy::GroupMask;

/// A session's outbox holds at most this much; past it packets are dropped
/// (as a full interface queue would) so a slow client cannot eat memory.
pub const OUTBOX_LIMIT: usize = 2 * 1024 * 1024;

#[derive(Default)]
pub struct Outbox {
    buf: Mutex<BytesMut>,
    notify: Notify,
    closed: AtomicBool,
}

impl Outbox {
    fn locked(&self) -> std::sync::MutexGuard<'_, BytesMut> {
        // A panic elsewhere while holding the lock leaves bytes, not broken
        // invariants: keep going.
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one packet; false if it was dropped (full or closed).
    pub fn push_packet(&self, packet: &[u8]) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let mut buf = self.locked();
        if buf.len() + packet.len() > OUTBOX_LIMIT {
            return false;
        }
        let was_empty = buf.is_empty();
        let ok = encode_packet(&mut *buf, packet).is_ok();
        drop(buf);
        if ok && was_empty {
            self.notify.notify_one();
        }
        ok
    }

    pub fn push_control(&self, msg: &Control) {
        let mut buf = self.locked();
        let _ = encode_control(&mut *buf, msg);
        drop(buf);
        self.notify.notify_one();
    }

    /// Waits until something is queued, then swaps it into `spare` (which
    /// must be empty) so the lock is not held while writing.
    pub async fn take(&self, spare: &mut BytesMut) {
        loop {
            let notified = self.notify.notified();
            {
                let mut buf = self.locked();
                if !buf.is_empty() {
                    std::mem::swap(&mut *buf, spare);
                    return;
                }
            }
            notified.await;
        }
    }

    /// Gives an idle outbox's memory back.
    pub fn shrink_if_empty(&self) {
        let mut buf = self.locked();
        if buf.is_empty() && buf.capacity() > 0 {
            *buf = BytesMut::new();
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

/// Byte and packet counters of one session, named from the gateway's side
/// as the managed service's connection log names them: ingress is from the
/// client, egress is to the client.
#[derive(Default)]
pub struct Counters {
    pub ingress_bytes: AtomicU64,
    pub ingress_packets: AtomicU64,
    pub egress_bytes: AtomicU64,
    pub egress_packets: AtomicU64,
}

impl Counters {
    pub fn add(counter_bytes: &AtomicU64, counter_packets: &AtomicU64, bytes: usize) {
        counter_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        counter_packets.fetch_add(1, Ordering::Relaxed);
    }
}

/// Gateway-wide drop counters.
#[derive(Default)]
pub struct Drops {
    pub spoofed: AtomicU64,
    pub no_route: AtomicU64,
    pub denied: AtomicU64,
    pub malformed: AtomicU64,
    pub no_session: AtomicU64,
    pub queue_full: AtomicU64,
}

/// What the data path knows of a live session.
pub struct SessionHandle {
    pub connection_id: String,
    pub common_name: String,
    pub serial: String,
    pub address: Ipv4Addr,
    pub device: std::net::SocketAddr,
    pub started: time::OffsetDateTime,
    pub outbox: Outbox,
    pub counters: Counters,
    /// The client's groups, as the policy knows them.
    pub groups: GroupMask,
    /// The datagram channel, if the client asked for it and the endpoint
    /// runs one.
    pub datagram: Option<DatagramPath>,
    /// Set with the reason when the session must end (terminate, revoked).
    pub end: Notify,
    pub end_reason: Mutex<Option<String>>,
}

impl SessionHandle {
    /// A connection-log record of this session.
    pub fn record(&self, event: Event) -> Record {
        Record {
            connection_id: self.connection_id.clone(),
            common_name: Some(self.common_name.clone()),
            client_ip: Some(self.address),
            device: self.device,
            datagram: self.datagram.is_some(),
            start: self.started,
            event,
        }
    }

    pub fn traffic(&self) -> Traffic {
        let c = &self.counters;
        Traffic {
            ingress_bytes: c.ingress_bytes.load(Ordering::Relaxed),
            egress_bytes: c.egress_bytes.load(Ordering::Relaxed),
            ingress_packets: c.ingress_packets.load(Ordering::Relaxed),
            egress_packets: c.egress_packets.load(Ordering::Relaxed),
        }
    }

    pub fn terminate(&self, reason: &str) {
        let mut r = self.end_reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason.to_string());
        }
        drop(r);
        self.end.notify_one();
    }

    pub fn reason(&self) -> Option<String> {
        self.end_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Live sessions by tunnel address.
#[derive(Default)]
pub struct Registry {
    by_addr: RwLock<HashMap<Ipv4Addr, Arc<SessionHandle>>>,
    /// Sessions with a datagram channel, by its session id.
    by_datagram: RwLock<HashMap<u64, Arc<SessionHandle>>>,
}

impl Registry {
    pub fn insert(&self, s: Arc<SessionHandle>) {
        if let Some(d) = &s.datagram {
            self.by_datagram
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(d.session, s.clone());
        }
        self.by_addr
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.address, s);
    }

    pub fn remove(&self, addr: Ipv4Addr) {
        let gone = self
            .by_addr
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
        if let Some(d) = gone.as_ref().and_then(|s| s.datagram.as_ref()) {
            self.by_datagram
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&d.session);
        }
    }

    /// The session a datagram's id names.
    pub fn by_datagram(&self, session: u64) -> Option<Arc<SessionHandle>> {
        self.by_datagram
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&session)
            .cloned()
    }

    #[inline]
    pub fn get(&self, addr: Ipv4Addr) -> Option<Arc<SessionHandle>> {
        self.by_addr
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
    }

    /// Sessions registered.
    pub fn len(&self) -> usize {
        self.by_addr.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// No session registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.by_addr
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// The IPv4 destination of a packet read from the tun device (behind its
/// virtio-net header), if it is one.
#[inline]
pub fn ipv4_destination(payload: &[u8]) -> Option<Ipv4Addr> {
    let h = payload.get(VNET_HDR_LEN..VNET_HDR_LEN + 20)?;
    (h[0] >> 4 == 4).then(|| Ipv4Addr::new(h[16], h[17], h[18], h[19]))
}

/// Hands one packet read from the tun device (virtio-net header and IP
/// packet) to the session that owns its destination: to `datagram` first,
/// which sends it on the session's datagram channel if it can (true), else
/// to the session's outbox for its TLS stream.
pub fn deliver(
    registry: &Registry,
    drops: &Drops,
    packet: &[u8],
    datagram: impl FnOnce(&SessionHandle, &[u8]) -> bool,
) {
    // Not IPv4: the kernel's own IPv6 chatter as the device comes up,
    // before its IPv6 is disabled. No client sent it, so no counter of
    // theirs moves; the tunnel carries IPv4 only.
    let Some(dst) = ipv4_destination(packet) else {
        return;
    };
    let Some(s) = registry.get(dst) else {
        drops.no_session.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if datagram(&s, packet) || s.outbox.push_packet(packet) {
        Counters::add(
            &s.counters.egress_bytes,
            &s.counters.egress_packets,
            packet.len() - VNET_HDR_LEN,
        );
    } else {
        drops.queue_full.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvpn_proto::{Frame, decode};

    /// A virtio-net header and an IPv4 packet of `len` bytes to `dst`.
    fn packet(dst: [u8; 4], len: usize) -> Vec<u8> {
        let mut p = vec![0u8; VNET_HDR_LEN + len];
        p[VNET_HDR_LEN] = 0x45;
        p[VNET_HDR_LEN + 16..VNET_HDR_LEN + 20].copy_from_slice(&dst);
        p
    }

    #[tokio::test]
    async fn queued_packets_leave_in_one_batch() {
        let outbox = Outbox::default();
        for len in [20, 100, 1500] {
            assert!(outbox.push_packet(&packet([10, 0, 0, 2], len)));
        }
        outbox.push_control(&Control::Keepalive);
        let mut spare = BytesMut::new();
        outbox.take(&mut spare).await;
        let mut lens = Vec::new();
        let mut pos = 0;
        while let Some((f, n)) = decode(&spare[pos..]).unwrap() {
            lens.push(match f {
                Frame::Packet(p) => p.len(),
                Frame::Control(_) => 0,
            });
            pos += n;
        }
        assert_eq!(lens, vec![30, 110, 1510, 0]);
    }

    #[test]
    fn full_outbox_drops_instead_of_growing() {
        let outbox = Outbox::default();
        let p = packet([10, 0, 0, 2], 60_000);
        let accepted = (0..100).filter(|_| outbox.push_packet(&p)).count();
        assert_eq!(accepted, OUTBOX_LIMIT / (60_010 + 4));
        outbox.close();
        assert!(!outbox.push_packet(&packet([10, 0, 0, 2], 20)));
    }

    #[tokio::test]
    async fn deliver_by_destination() {
        let registry = Registry::default();
        let drops = Drops::default();
        let s = Arc::new(SessionHandle {
            connection_id: "c".into(),
            common_name: "alice".into(),
            serial: "01".into(),
            address: Ipv4Addr::new(10, 0, 0, 2),
            device: "198.18.0.2:1000".parse().unwrap(),
            started: time::OffsetDateTime::now_utc(),
            outbox: Outbox::default(),
            counters: Counters::default(),
            groups: GroupMask::default(),
            datagram: None,
            end: Notify::new(),
            end_reason: Mutex::new(None),
        });
        registry.insert(s.clone());
        let stream = |_: &SessionHandle, _: &[u8]| false;
        deliver(&registry, &drops, &packet([10, 0, 0, 2], 40), stream);
        deliver(&registry, &drops, &packet([10, 0, 0, 3], 40), stream);
        deliver(&registry, &drops, &[0x60; 40], stream);
        assert_eq!(s.counters.egress_packets.load(Ordering::Relaxed), 1);
        // Sent as a datagram: counted, and not queued for the stream.
        let mut spare = BytesMut::new();
        s.outbox.take(&mut spare).await;
        deliver(&registry, &drops, &packet([10, 0, 0, 2], 40), |_, _| true);
        assert_eq!(s.counters.egress_packets.load(Ordering::Relaxed), 2);
        assert!(s.outbox.locked().is_empty());
        assert_eq!(drops.no_session.load(Ordering::Relaxed), 1);
        assert_eq!(drops.malformed.load(Ordering::Relaxed), 0);
    }
}
