//! The way from an OpenVPN session to its client: offload trains from the
//! tun device become plain packets, each sealed with the client's current
//! key, and the packets of one train leave in as few sends as the wire
//! allows.

use std::cell::RefCell;
use std::sync::Arc;

use crate::endpoint::session::Link;
use crate::inside::segment::plain_packets;
use crate::protocol::openvpn::channel::DataChannel;
use crate::protocol::openvpn::data::MAX_OVERHEAD;

/// Where a client's OpenVPN packets go: its TCP stream or its UDP address.
pub trait Wire: Send + Sync {
    /// Sends one OpenVPN packet; false if it was dropped.
    fn send(&self, packet: &[u8]) -> bool;

    /// Sends packets of `stride` bytes laid back to back in `packets`
    /// (the last may be shorter); false if any was dropped.
    fn send_many(&self, packets: &[u8], stride: usize) -> bool {
        packets.chunks(stride).all(|p| self.send(p))
    }
}

/// Bytes one batched send carries at most (a UDP datagram's limit, with
/// room for headers).
const MAX_BATCH_BYTES: usize = 60_000;
/// Packets one batched send carries at most (the kernel's UDP_MAX_SEGMENTS).
const MAX_BATCH_PACKETS: usize = 64;

thread_local! {
    /// A segment, the sealed packets of a frame back to back, and their
    /// lengths: one set per thread, none per packet.
    static SEAL_BUFS: RefCell<(Vec<u8>, Vec<u8>, Vec<usize>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// An OpenVPN session's way toward its client: offload trains are cut
/// into plain packets, each sealed with the current key; the packets of
/// one train leave in as few sends as the wire allows (UDP: one
/// segmentation-offload datagram train per 64 packets).
pub struct OpenVpnLink {
    /// The client's keys.
    pub data: Arc<DataChannel>,
    /// Its packets' way out.
    pub wire: Arc<dyn Wire>,
}

impl Link for OpenVpnLink {
    fn send(&self, frame: &[u8]) -> bool {
        SEAL_BUFS.with_borrow_mut(|(scratch, batch, sizes)| {
            batch.clear();
            sizes.clear();
            let mut sealed = true;
            let ok = plain_packets(frame, scratch, |p| {
                let at = batch.len();
                batch.resize(at + p.len() + MAX_OVERHEAD, 0);
                match self.data.seal(p, &mut batch[at..]) {
                    Ok(n) => {
                        batch.truncate(at + n);
                        sizes.push(n);
                    }
                    Err(_) => {
                        batch.truncate(at);
                        sealed = false;
                    }
                }
            });
            ok && sealed && self.send_sealed(batch, sizes)
        })
    }
}

impl OpenVpnLink {
    /// Sends sealed packets: batched when all but the last have one size
    /// (a TCP train's segments do), one by one otherwise.
    fn send_sealed(&self, batch: &[u8], sizes: &[usize]) -> bool {
        let Some((&stride, rest)) = sizes.split_first() else {
            return true;
        };
        let uniform = rest
            .split_last()
            .is_none_or(|(&last, middle)| last <= stride && middle.iter().all(|&s| s == stride));
        if uniform && !rest.is_empty() {
            let per = (MAX_BATCH_BYTES / stride).clamp(1, MAX_BATCH_PACKETS);
            return batch
                .chunks(per * stride)
                .all(|c| self.wire.send_many(c, stride));
        }
        let mut at = 0;
        sizes.iter().fold(true, |sent, &n| {
            let p = &batch[at..at + n];
            at += n;
            self.wire.send(p) && sent
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openvpn::keys::{Cipher, KEY_BLOCK_LEN, server_keys};
    use cvpn_proto::VNET_HDR_LEN;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        sends: Mutex<Vec<(usize, usize)>>,
    }

    impl Wire for Recorder {
        fn send(&self, packet: &[u8]) -> bool {
            self.sends
                .lock()
                .unwrap()
                .push((packet.len(), packet.len()));
            true
        }
        fn send_many(&self, packets: &[u8], stride: usize) -> bool {
            self.sends.lock().unwrap().push((packets.len(), stride));
            true
        }
    }

    /// A TCP train of `len` payload bytes cut at `mss`.
    fn train(len: usize, mss: u16) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN + 40 + len];
        f[0] = 1;
        f[1] = 1;
        f[4..6].copy_from_slice(&mss.to_le_bytes());
        f[6..8].copy_from_slice(&20u16.to_le_bytes());
        f[8..10].copy_from_slice(&16u16.to_le_bytes());
        let p = &mut f[VNET_HDR_LEN..];
        p[0] = 0x45;
        p[9] = 6;
        p[32] = 5 << 4;
        f
    }

    #[test]
    fn a_train_leaves_in_batches_of_equal_packets() {
        let data = Arc::new(DataChannel::new(1));
        let block = [9u8; KEY_BLOCK_LEN];
        data.install(
            0,
            Cipher::Aes256Gcm,
            &server_keys(&block, Cipher::Aes256Gcm),
        );
        data.activate(0);
        let wire = Arc::new(Recorder::default());
        let link = OpenVpnLink {
            data,
            wire: wire.clone(),
        };
        // 100 segments of 1400 bytes and a short one: two batches of at
        // most 60,000 bytes, every packet 1440 + 24 bytes but the last.
        assert!(link.send(&train(100 * 1400 + 100, 1400)));
        let sends = wire.sends.lock().unwrap().clone();
        let stride = 1440 + 24;
        assert!(sends.iter().all(|&(_, s)| s == stride), "{sends:?}");
        assert!(sends.iter().all(|&(n, _)| n <= 60_000), "{sends:?}");
        let total: usize = sends.iter().map(|&(n, _)| n).sum();
        assert_eq!(total, 100 * stride + 140 + 24);
        assert_eq!(sends.len(), (101usize).div_ceil(60_000 / stride));
        // A plain packet goes alone.
        wire.sends.lock().unwrap().clear();
        let mut one = vec![0u8; VNET_HDR_LEN + 28];
        one[VNET_HDR_LEN] = 0x45;
        assert!(link.send(&one));
        assert_eq!(wire.sends.lock().unwrap().as_slice(), &[(52, 52)]);
    }
}
