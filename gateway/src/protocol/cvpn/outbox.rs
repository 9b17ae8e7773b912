//! A cvpn/1 session's outbox: packets for the client are framed straight
//! into one growing buffer, swapped with a spare by the writer, so a burst
//! of queued packets leaves in one TLS record and one write and no packet
//! costs an allocation.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use cvpn_proto::{Control, encode_control, encode_packet};
use tokio::sync::Notify;

/// A session's outbox holds at most this much; past it packets are dropped
/// (as a full interface queue would) so a slow client cannot eat memory.
pub const OUTBOX_LIMIT: usize = 2 * 1024 * 1024;

/// Frames queued for one client's stream.
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

    /// Queues one control message.
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

    /// Refuses packets from now on and wakes the writer.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvpn_proto::{Frame, VNET_HDR_LEN, decode};

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
}
