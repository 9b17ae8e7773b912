//! The data channel (crypto.c, AEAD mode): each packet is the header (the
//! opcode and key id byte, and for DATA_V2 a 24-bit peer id), a 32-bit
//! packet id, the 16-byte tag and the ciphertext. The nonce is the packet
//! id followed by the direction's 8-byte implicit IV; the associated data
//! is the header (DATA_V2 only) and the packet id. Received ids pass a
//! sliding replay window (packet_id.c's backtrack, 64 by default).

use aws_lc_rs::aead::{
    AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey,
};
use thiserror::Error;

use super::keys::{Cipher, DirectionKey};
use super::packet::{DATA_V1, DATA_V2};

/// Bytes an AEAD tag takes.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a payload: a DATA_V2 header, the packet id and
/// the tag.
pub const OVERHEAD: usize = 4 + 4 + TAG_LEN;
/// What sealing adds at most: OVERHEAD and a compression framing byte.
pub const MAX_OVERHEAD: usize = OVERHEAD + 1;
/// The keepalive ping's payload (ping.c).
pub const PING: [u8; 16] = [
    0x2a, 0x18, 0x7b, 0xf3, 0x64, 0x1e, 0xb4, 0xcb, 0x07, 0xed, 0x2d, 0x0a, 0x98, 0x1f, 0xc7, 0x48,
];
/// An OCC message's prefix (occ.h); OCC_EXIT follows it for an exit.
pub const OCC_MAGIC: [u8; 16] = [
    0x28, 0x7f, 0x34, 0x6b, 0xd4, 0xef, 0x7a, 0x81, 0x2d, 0x56, 0xb8, 0xd3, 0xaf, 0xc5, 0x45, 0x9c,
];
/// The OCC opcode of an explicit exit.
pub const OCC_EXIT: u8 = 6;
/// Replay window width, in packet ids.
const REPLAY_WINDOW: u32 = 64;
/// Packet ids left to a worn-out key for its renegotiation.
const MARGIN: u32 = 0x1000;
/// A key is renegotiated before its packet ids run out.
const LAST_PACKET_ID: u32 = u32::MAX - MARGIN;
/// AES-GCM's usage limit in 16-byte blocks sealed with one key (the
/// confidentiality bound of draft-irtf-cfrg-aead-limits at 2^-57 for
/// full-size packets, as OpenVPN 2.6.10's AEAD limit), of which a key is
/// worn out at 7/8, leaving room for the renegotiation.
const AES_GCM_BLOCK_LIMIT: u64 = (1 << 36) / 8 * 7;
/// The environment variable that lowers the packets a key seals before
/// it counts as worn out (and, MARGIN later, stops sealing as if its
/// packet ids ran out): tests reach the limit in seconds.
pub const KEY_PACKETS_ENV: &str = "CVPN_OPENVPN_KEY_PACKETS";

/// Packets a key seals before it is worn out: LAST_PACKET_ID, or less
/// if the environment says so.
fn packet_limit() -> u32 {
    static LIMIT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(KEY_PACKETS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &u32| n > 0)
            .map_or(LAST_PACKET_ID, |n| n.min(LAST_PACKET_ID))
    })
}

/// Why a data packet was dropped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DataError {
    /// Too short for its header, id and tag.
    #[error("data packet truncated")]
    Truncated,
    /// The tag did not match.
    #[error("data packet failed authentication")]
    Authentication,
    /// A packet id seen before or too old.
    #[error("data packet replayed")]
    Replay,
    /// The key's packet ids are used up.
    #[error("data key exhausted")]
    Exhausted,
    /// The output buffer is too small.
    #[error("output buffer too small")]
    NoRoom,
}

fn aead_key(cipher: Cipher, key: &[u8]) -> LessSafeKey {
    let alg = match cipher {
        Cipher::Aes128Gcm => &AES_128_GCM,
        Cipher::Aes256Gcm => &AES_256_GCM,
        Cipher::Chacha20Poly1305 => &CHACHA20_POLY1305,
    };
    // The key block always holds cipher.key_len() bytes per direction.
    LessSafeKey::new(UnboundKey::new(alg, key).expect("key length of its cipher"))
}

fn nonce(packet_id: u32, implicit_iv: &[u8; 8]) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&packet_id.to_be_bytes());
    n[4..].copy_from_slice(implicit_iv);
    Nonce::assume_unique_for_key(n)
}

/// Seals packets toward the client with one key id.
pub struct Sealer {
    key: LessSafeKey,
    implicit_iv: [u8; 8],
    header: [u8; 4],
    header_len: usize,
    last_id: u32,
    /// 16-byte blocks sealed so far, and where the key wears out.
    blocks: u64,
    block_limit: u64,
    packet_limit: u32,
}

impl Sealer {
    /// A sealer for `key_id`; DATA_V2 with `peer_id`, else DATA_V1.
    pub fn new(cipher: Cipher, key: &DirectionKey, key_id: u8, peer_id: Option<u32>) -> Sealer {
        let (header, header_len) = match peer_id {
            Some(id) => {
                let b = id.to_be_bytes();
                ([DATA_V2 << 3 | key_id, b[1], b[2], b[3]], 4)
            }
            None => ([DATA_V1 << 3 | key_id, 0, 0, 0], 1),
        };
        Sealer {
            key: aead_key(cipher, &key.key),
            implicit_iv: key.implicit_iv,
            header,
            header_len,
            last_id: 0,
            blocks: 0,
            block_limit: match cipher {
                Cipher::Aes128Gcm | Cipher::Aes256Gcm => AES_GCM_BLOCK_LIMIT,
                Cipher::Chacha20Poly1305 => u64::MAX,
            },
            packet_limit: packet_limit(),
        }
    }

    /// The key id it seals with.
    pub fn key_id(&self) -> u8 {
        self.header[0] & 7
    }

    /// Whether the key is near the end of its packet ids or of the
    /// cipher's usage limit: time to renegotiate.
    pub fn worn_out(&self) -> bool {
        self.last_id >= self.packet_limit || self.blocks >= self.block_limit
    }

    /// Seals `payload` into `out`; returns the packet's length.
    pub fn seal(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, DataError> {
        self.seal_parts(&[payload], out)
    }

    /// Seals the concatenation of `parts` (a payload and its framing)
    /// into `out`; returns the packet's length.
    pub fn seal_parts(&mut self, parts: &[&[u8]], out: &mut [u8]) -> Result<usize, DataError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let h = self.header_len;
        let total = h + 4 + TAG_LEN + len;
        if out.len() < total {
            return Err(DataError::NoRoom);
        }
        if self.last_id >= self.packet_limit.saturating_add(MARGIN - 1) {
            return Err(DataError::Exhausted);
        }
        self.last_id += 1;
        // The tag's block too.
        self.blocks += len.div_ceil(16) as u64 + 1;
        let id = self.last_id;
        out[..h].copy_from_slice(&self.header[..h]);
        out[h..h + 4].copy_from_slice(&id.to_be_bytes());
        let (head, body) = out.split_at_mut(h + 4 + TAG_LEN);
        let body = &mut body[..len];
        let mut at = 0;
        for p in parts {
            body[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        let aad = aad(&head[..h + 4], h);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(id, &self.implicit_iv), Aad::from(aad), body)
            .map_err(|_| DataError::NoRoom)?;
        head[h + 4..].copy_from_slice(tag.as_ref());
        Ok(total)
    }
}

/// The associated data: the DATA_V2 header and the packet id, or (V1) the
/// packet id alone.
fn aad(header_and_id: &[u8], header_len: usize) -> &[u8] {
    if header_len == 4 {
        header_and_id
    } else {
        &header_and_id[header_len..]
    }
}

/// A sliding window of the packet ids seen.
#[derive(Default)]
struct ReplayWindow {
    highest: u32,
    /// Bit i: highest - i was seen.
    seen: u64,
}

impl ReplayWindow {
    fn check(&self, id: u32) -> bool {
        if id == 0 {
            return false;
        }
        if id > self.highest {
            return true;
        }
        let back = self.highest - id;
        back < REPLAY_WINDOW && self.seen & (1 << back) == 0
    }

    fn mark(&mut self, id: u32) {
        if id > self.highest {
            let shift = id - self.highest;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = id;
        } else {
            self.seen |= 1 << (self.highest - id);
        }
    }
}

/// Opens packets from the client with one key id.
pub struct Opener {
    key: LessSafeKey,
    implicit_iv: [u8; 8],
    replay: ReplayWindow,
}

impl Opener {
    /// An opener for the client's direction of `key`.
    pub fn new(cipher: Cipher, key: &DirectionKey) -> Opener {
        Opener {
            key: aead_key(cipher, &key.key),
            implicit_iv: key.implicit_iv,
            replay: ReplayWindow::default(),
        }
    }

    /// Opens a data packet in place; returns where its payload lies in
    /// `packet`. The packet id is only recorded once the tag checks out.
    pub fn open(&mut self, packet: &mut [u8]) -> Result<std::ops::Range<usize>, DataError> {
        let h = match packet.first().map(|b| b >> 3) {
            Some(DATA_V2) => 4,
            _ => 1,
        };
        if packet.len() < h + 4 + TAG_LEN {
            return Err(DataError::Truncated);
        }
        let id = u32::from_be_bytes([packet[h], packet[h + 1], packet[h + 2], packet[h + 3]]);
        if !self.replay.check(id) {
            return Err(DataError::Replay);
        }
        let (head, body) = packet.split_at_mut(h + 4 + TAG_LEN);
        let (header_and_id, tag) = head.split_at(h + 4);
        self.key
            .open_in_place_separate_tag(
                nonce(id, &self.implicit_iv),
                Aad::from(aad(header_and_id, h)),
                tag,
                body,
            )
            .map_err(|_| DataError::Authentication)?;
        self.replay.mark(id);
        Ok(h + 4 + TAG_LEN..packet.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8, cipher: Cipher) -> DirectionKey {
        DirectionKey {
            key: vec![b; cipher.key_len()],
            implicit_iv: [b ^ 0x55; 8],
        }
    }

    #[test]
    fn a_key_wears_out_before_its_packet_ids_or_usage_limit_end() {
        let k = key(3, Cipher::Aes128Gcm);
        let mut s = Sealer::new(Cipher::Aes128Gcm, &k, 1, None);
        let mut out = [0u8; 1600];
        s.seal(&[0; 1400], &mut out).unwrap();
        assert!(!s.worn_out());
        // Near the end of the packet ids.
        s.last_id = LAST_PACKET_ID - 1;
        s.seal(&[0; 10], &mut out).unwrap();
        assert!(s.worn_out());
        // AES-GCM's block limit comes first for large packets; ChaCha20
        // has none short of the packet ids.
        let mut s = Sealer::new(Cipher::Aes256Gcm, &key(3, Cipher::Aes256Gcm), 1, None);
        s.blocks = AES_GCM_BLOCK_LIMIT - 10;
        s.seal(&[0; 1400], &mut out).unwrap();
        assert!(s.worn_out());
        let c = key(3, Cipher::Chacha20Poly1305);
        let mut s = Sealer::new(Cipher::Chacha20Poly1305, &c, 1, None);
        s.blocks = AES_GCM_BLOCK_LIMIT * 4;
        s.seal(&[0; 1400], &mut out).unwrap();
        assert!(!s.worn_out());
    }

    #[test]
    fn sealed_packets_open_once_in_any_order_within_the_window() {
        for cipher in [
            Cipher::Aes256Gcm,
            Cipher::Aes128Gcm,
            Cipher::Chacha20Poly1305,
        ] {
            let k = key(7, cipher);
            let mut s = Sealer::new(cipher, &k, 1, Some(0x010203));
            let mut o = Opener::new(cipher, &k);
            let mut packets = Vec::new();
            for i in 0..70u8 {
                let mut out = [0u8; 128];
                let n = s.seal(&[i; 40], &mut out).unwrap();
                assert_eq!(n, 40 + OVERHEAD);
                assert_eq!(&out[..4], &[DATA_V2 << 3 | 1, 1, 2, 3]);
                packets.push(out[..n].to_vec());
            }
            // Out of order within the window: fine, once.
            let mut p = packets[5].clone();
            let r = o.open(&mut p).unwrap();
            assert_eq!(&p[r], &[5u8; 40]);
            let mut p = packets[2].clone();
            assert!(o.open(&mut p).is_ok());
            let mut p = packets[2].clone();
            assert_eq!(o.open(&mut p), Err(DataError::Replay));
            // Far behind the newest: refused.
            let mut p = packets[69].clone();
            assert!(o.open(&mut p).is_ok());
            let mut p = packets[3].clone();
            assert_eq!(o.open(&mut p), Err(DataError::Replay));
            // A flipped bit anywhere, the header included, fails.
            for i in [0usize, 3, 5, 9, 30] {
                let mut p = packets[60].clone();
                p[i] ^= 1;
                assert!(o.open(&mut p).is_err(), "byte {i}");
            }
            // ... and a forged packet does not use up its id.
            let mut p = packets[60].clone();
            assert!(o.open(&mut p).is_ok());
            let mut short = vec![DATA_V2 << 3; 10];
            assert_eq!(o.open(&mut short), Err(DataError::Truncated));
        }
    }

    #[test]
    fn data_v1_authenticates_the_packet_id_only() {
        let k = key(9, Cipher::Aes256Gcm);
        let mut s = Sealer::new(Cipher::Aes256Gcm, &k, 0, None);
        let mut out = [0u8; 64];
        let n = s.seal(b"hello", &mut out).unwrap();
        assert_eq!(n, 1 + 4 + 16 + 5);
        assert_eq!(out[0], DATA_V1 << 3);
        let mut o = Opener::new(Cipher::Aes256Gcm, &k);
        let r = o.open(&mut out[..n]).unwrap();
        assert_eq!(&out[r], b"hello");
        assert_eq!(s.seal(b"x", &mut [0u8; 8]), Err(DataError::NoRoom));
    }
}
