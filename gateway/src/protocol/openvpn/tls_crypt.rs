//! tls-crypt (v1, tls_crypt.c): every control packet is authenticated
//! (HMAC-SHA256) and encrypted (AES-256-CTR, the tag's first 16 bytes as
//! IV) with a key all clients share, so that a packet without the key is
//! dropped before any TLS work and gets no answer. The key file is
//! OpenVPN's "Static key V1" format (`openvpn --genkey tls-crypt` writes
//! the same); the server encrypts with its first half and decrypts with
//! its second.
//!
//! Wire: opcode byte, session id, packet id (4 bytes) and time (4 bytes),
//! tag (32 bytes), then the rest of the control packet encrypted.

use aws_lc_rs::cipher::{AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use thiserror::Error;

const BEGIN: &str = "-----BEGIN OpenVPN Static key V1-----";
const END: &str = "-----END OpenVPN Static key V1-----";
/// Bytes of a static key: two directions of a 64-byte cipher key and a
/// 64-byte HMAC key.
pub const KEY_LEN: usize = 256;
const TAG_LEN: usize = 32;
/// Opcode, session id, packet id and time, tag.
pub const OVERHEAD: usize = 1 + 8 + 8 + TAG_LEN;

/// Why a key file or a packet was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TlsCryptError {
    /// The key file could not be read.
    #[error("tls.tls_crypt: cannot read {0}: {1}")]
    Read(String, String),
    /// The key file is not a key.
    #[error("tls.tls_crypt: {0}: not an OpenVPN static key (V1) of {KEY_LEN} bytes")]
    NotAKey(String),
    /// Not an OpenVPN static key file.
    #[error("not an OpenVPN static key (V1) of {KEY_LEN} bytes")]
    BadKeyFile,
    /// Too short to be wrapped.
    #[error("packet too short for tls-crypt")]
    Truncated,
    /// The tag did not match: not sent with this key.
    #[error("packet failed tls-crypt authentication")]
    Authentication,
}

/// A tls-crypt key as read from its file.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKey([u8; KEY_LEN]);

impl std::fmt::Debug for StaticKey {
    /// Never the key itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticKey(..)")
    }
}

impl StaticKey {
    /// Reads a key file's text.
    pub fn parse(text: &str) -> Result<StaticKey, TlsCryptError> {
        let body = text
            .split_once(BEGIN)
            .and_then(|(_, rest)| rest.split_once(END))
            .map(|(body, _)| body)
            .ok_or(TlsCryptError::BadKeyFile)?;
        let hex: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        if hex.len() != 2 * KEY_LEN || !hex.is_ascii() {
            return Err(TlsCryptError::BadKeyFile);
        }
        let mut key = [0u8; KEY_LEN];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| TlsCryptError::BadKeyFile)?;
        }
        Ok(StaticKey(key))
    }

    /// Reads the key file at `path` (errors name the key and the file).
    pub fn load(path: &std::path::Path) -> Result<StaticKey, TlsCryptError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| TlsCryptError::Read(shown.clone(), e.to_string()))?;
        StaticKey::parse(&text).map_err(|_| TlsCryptError::NotAKey(shown))
    }

    /// A new random key; None without system randomness.
    pub fn generate() -> Option<StaticKey> {
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).ok()?;
        Some(StaticKey(key))
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        let mut s = String::from("#\n# 2048 bit OpenVPN static key (tls-crypt)\n#\n");
        s.push_str(BEGIN);
        s.push('\n');
        for line in self.0.chunks(16) {
            for b in line {
                s.push_str(&format!("{b:02x}"));
            }
            s.push('\n');
        }
        s.push_str(END);
        s.push('\n');
        s
    }
}

struct Direction {
    cipher: EncryptingKey,
    hmac: hmac::Key,
}

impl Direction {
    fn new(key: &StaticKey, i: usize) -> Direction {
        let k = &key.0[i * 128..(i + 1) * 128];
        let unbound = UnboundCipherKey::new(&AES_256, &k[..32]).expect("32-byte AES-256 key");
        Direction {
            cipher: EncryptingKey::ctr(unbound).expect("AES-256-CTR"),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, &k[64..96]),
        }
    }

    fn tag(&self, head: &[u8], plaintext: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.hmac);
        ctx.update(head);
        ctx.update(plaintext);
        ctx.sign()
    }

    /// AES-256-CTR with the tag's first 16 bytes as IV (its own inverse).
    fn ctr(&self, tag: &[u8], data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&tag[..16]);
        let ctx = EncryptionContext::Iv128(FixedLength::from(iv));
        // CTR takes any length and any 16-byte IV.
        let _ = self.cipher.less_safe_encrypt(data, ctx);
    }
}

/// One side's tls-crypt state.
pub struct TlsCrypt {
    seal: Direction,
    open: Direction,
}

impl TlsCrypt {
    /// The server's side of `key`.
    pub fn server(key: &StaticKey) -> TlsCrypt {
        TlsCrypt {
            seal: Direction::new(key, 0),
            open: Direction::new(key, 1),
        }
    }

    /// The client's side of `key` (tests).
    pub fn client(key: &StaticKey) -> TlsCrypt {
        TlsCrypt {
            seal: Direction::new(key, 1),
            open: Direction::new(key, 0),
        }
    }

    /// Wraps a plain control packet under packet id `id` and `time`.
    pub fn wrap(&self, packet: &[u8], id: u32, time: u32) -> Vec<u8> {
        let split = packet.len().min(9);
        let (head, rest) = packet.split_at(split);
        let mut out = Vec::with_capacity(packet.len() + OVERHEAD - 9);
        out.extend_from_slice(head);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&time.to_be_bytes());
        let tag = self.seal.tag(&out, rest);
        out.extend_from_slice(tag.as_ref());
        let start = out.len();
        out.extend_from_slice(rest);
        self.seal.ctr(tag.as_ref(), &mut out[start..]);
        out
    }

    /// Unwraps a packet: the plain control packet, and its packet id
    /// and time.
    pub fn unwrap(&self, wire: &[u8]) -> Result<(Vec<u8>, u32, u32), TlsCryptError> {
        if wire.len() < OVERHEAD {
            return Err(TlsCryptError::Truncated);
        }
        let (head, rest) = wire.split_at(17);
        let (tag, ciphertext) = rest.split_at(TAG_LEN);
        let mut plain = Vec::with_capacity(9 + ciphertext.len());
        plain.extend_from_slice(&head[..9]);
        plain.extend_from_slice(ciphertext);
        self.open.ctr(tag, &mut plain[9..]);
        let expected = self.open.tag(head, &plain[9..]);
        aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), tag)
            .map_err(|_| TlsCryptError::Authentication)?;
        let id = u32::from_be_bytes([head[9], head[10], head[11], head[12]]);
        let time = u32::from_be_bytes([head[13], head[14], head[15], head[16]]);
        Ok((plain, id, time))
    }
}

/// The packet ids of one peer's wrapped packets: each (time, id) pair is
/// taken once, and never one older than the newest by more than the
/// window (packet_id.c's check for the long form).
#[derive(Default)]
pub struct Replay {
    time: u32,
    highest: u32,
    seen: u64,
}

impl Replay {
    /// Whether (`time`, `id`) is new; if so it is recorded.
    pub fn accept(&mut self, time: u32, id: u32) -> bool {
        if id == 0 || time < self.time {
            return false;
        }
        if time > self.time {
            *self = Replay {
                time,
                highest: id,
                seen: 1,
            };
            return true;
        }
        if id > self.highest {
            let shift = id - self.highest;
            self.seen = if shift >= 64 {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.highest = id;
            return true;
        }
        let back = self.highest - id;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_bad_ones_are_named() {
        let k = StaticKey::generate().unwrap();
        let text = k.to_text();
        assert_eq!(text.lines().filter(|l| l.len() == 32).count(), 16);
        assert!(StaticKey::parse(&text).unwrap() == k);
        assert_eq!(StaticKey::parse("nothing"), Err(TlsCryptError::BadKeyFile));
        let short = text.replacen(
            &text[text.find(BEGIN).unwrap() + BEGIN.len() + 1..][..32],
            "",
            1,
        );
        assert_eq!(StaticKey::parse(&short), Err(TlsCryptError::BadKeyFile));
    }

    #[test]
    fn only_the_key_opens_and_each_direction_is_its_own() {
        let k = StaticKey::generate().unwrap();
        let (server, client) = (TlsCrypt::server(&k), TlsCrypt::client(&k));
        let packet: Vec<u8> = (0..60).collect();
        let wire = client.wrap(&packet, 7, 1000);
        assert_eq!(wire.len(), packet.len() + OVERHEAD - 9);
        assert_eq!(&wire[..9], &packet[..9]);
        assert_ne!(&wire[OVERHEAD..], &packet[9..]);
        assert_eq!(server.unwrap(&wire).unwrap(), (packet.clone(), 7, 1000));
        // The server's own direction does not open the client's packets.
        assert!(client.unwrap(&wire).is_err());
        for i in [0usize, 9, 20, 60] {
            let mut bad = wire.clone();
            bad[i] ^= 1;
            assert_eq!(server.unwrap(&bad), Err(TlsCryptError::Authentication));
        }
        let other = TlsCrypt::server(&StaticKey::generate().unwrap());
        assert!(other.unwrap(&wire).is_err());
        assert_eq!(server.unwrap(&wire[..40]), Err(TlsCryptError::Truncated));
        let back = server.wrap(&packet, 1, 5);
        assert_eq!(client.unwrap(&back).unwrap().0, packet);
    }

    #[test]
    fn replays_are_refused() {
        let mut r = Replay::default();
        assert!(r.accept(100, 1));
        assert!(r.accept(100, 3));
        assert!(r.accept(100, 2));
        assert!(!r.accept(100, 2));
        assert!(!r.accept(99, 50));
        assert!(r.accept(100, 200));
        assert!(!r.accept(100, 100));
        assert!(r.accept(101, 1));
        assert!(!r.accept(101, 0));
    }
}
