//! The datagram channel (`proto udp`): a session's small packets over UDP
//! beside its TLS stream, so they skip TCP's queueing on each end. The TLS
//! stream stays the session: it authenticates the client, carries control
//! messages, segmentation-offload packets and anything the datagram path
//! cannot take, and is where everything goes while the datagram path is
//! not (or no longer) working. This is how ocserv/AnyConnect pair DTLS with
//! their TLS channel, with the keys handed out the same way: the gateway
//! makes two random keys per session and sends them inside the TLS stream.
//!
//! A datagram is `[kind u8][session u64][counter u64]` then the payload
//! sealed with ChaCha20-Poly1305 under the direction's key, the header as
//! associated data and the counter as nonce. ChaCha20-Poly1305 has no
//! practical per-key limit, so keys live as long as the session. Receivers
//! drop replays with a sliding window.
//!
//! Pure: no I/O.

use std::fmt;

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

/// A packet frame's payload (virtio-net header and IP packet).
pub const KIND_PACKET: u8 = 1;
/// Empty payload: "this path works"; the gateway answers each one.
pub const KIND_PROBE: u8 = 2;

pub const HEADER_LEN: usize = 1 + 8 + 8;
const TAG_LEN: usize = 16;
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Datagrams stay within 1452 bytes, which a 1500-byte path carries over
/// IPv4 or IPv6 without fragments; bigger payloads take the TLS stream.
pub const MAX_DATAGRAM: usize = 1452;
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - OVERHEAD;
/// Counters a receiver still accepts below the highest it has seen.
const WINDOW: u64 = 1024;
/// A sender stops here (never reached in practice: 2^62 datagrams).
const LAST_COUNTER: u64 = 1 << 62;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatagramError {
    #[error("datagram of {0} bytes is too short")]
    Short(usize),
    #[error("payload of {0} bytes does not fit one datagram (at most {MAX_PAYLOAD})")]
    TooBig(usize),
    #[error("datagram of unknown kind {0}")]
    Kind(u8),
    #[error("datagram for another session")]
    Session,
    #[error("datagram replayed or too old")]
    Replay,
    #[error("datagram failed authentication")]
    Forged,
    #[error("datagram counter exhausted")]
    Exhausted,
}

fn hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let hex = String::deserialize(d)?;
    let bad = || serde::de::Error::custom("a key is 64 hex digits");
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(k)
}

/// Declares a one-direction key type: 256 bits, serialized as hex inside
/// the TLS stream, never printed, and deliberately not `Clone`: it is
/// consumed by the one sealer or opener made from it, so no second sealer
/// (a reopened socket, a retry) can ever restart a counter under it.
macro_rules! direction_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(PartialEq, Eq)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The key made of these bytes (tests and fuzzing; real keys
            /// come from [`key_pair`] or from the TLS stream).
            pub fn from_bytes(bytes: [u8; 32]) -> $name {
                $name(bytes)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex(&self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                unhex(d).map($name)
            }
        }
    };
}

direction_key!(
    /// The key one side seals a direction's datagrams with.
    SealingKey
);
direction_key!(
    /// The key the other side opens that direction's datagrams with.
    OpeningKey
);

/// A fresh random key for one direction, as the sealing and the opening
/// half; None if the system has no randomness to give.
pub fn key_pair() -> Option<(SealingKey, OpeningKey)> {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).ok()?;
    Some((SealingKey(k), OpeningKey(k)))
}

/// What the gateway tells a client that asked for the datagram channel:
/// the client's halves of the two directions' keys.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatagramOffer {
    /// UDP port on the gateway's address (the TLS stream's peer address).
    pub port: u16,
    /// The session id every datagram of this session carries.
    pub session: u64,
    /// The client seals what it sends to the gateway with this.
    pub to_gateway: SealingKey,
    /// The client opens what the gateway sends it with this.
    pub to_client: OpeningKey,
}

/// Whether a packet payload (virtio-net header and IP packet) may travel as
/// one datagram: small enough, and one packet rather than a segmentation-
/// offload train (those stay on the stream, where TCP carries them whole).
pub fn fits(payload: &[u8]) -> bool {
    payload.len() <= MAX_PAYLOAD
        && crate::VnetHdr::parse(payload)
            .is_some_and(|h| h.gso_type & !crate::vnet::GSO_ECN == crate::vnet::GSO_NONE)
}

/// The session a datagram claims to belong to, read before any key is
/// known so the receiver can pick the key.
pub fn session_of(datagram: &[u8]) -> Option<u64> {
    let id = datagram.get(1..9)?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is always the right length for ChaCha20-Poly1305.
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32-byte ChaCha20-Poly1305 key"),
    )
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// One direction's sending side.
pub struct Sealer {
    key: LessSafeKey,
    session: u64,
    next: u64,
}

impl Sealer {
    /// The sealer of `session`'s datagrams under `secret`, which it consumes.
    pub fn new(secret: SealingKey, session: u64) -> Sealer {
        Sealer {
            key: key(&secret.0),
            session,
            next: 0,
        }
    }

    /// Writes one datagram carrying `payload` into `out` and returns its
    /// length. `out` needs `payload.len() + OVERHEAD` bytes.
    pub fn seal(
        &mut self,
        kind: u8,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DatagramError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DatagramError::TooBig(payload.len()));
        }
        let len = payload.len() + OVERHEAD;
        let out = out
            .get_mut(..len)
            .ok_or(DatagramError::TooBig(payload.len()))?;
        if self.next >= LAST_COUNTER {
            return Err(DatagramError::Exhausted);
        }
        let counter = self.next;
        self.next += 1;
        let (header, rest) = out.split_at_mut(HEADER_LEN);
        header[0] = kind;
        header[1..9].copy_from_slice(&self.session.to_be_bytes());
        header[9..17].copy_from_slice(&counter.to_be_bytes());
        let (body, tag) = rest.split_at_mut(payload.len());
        body.copy_from_slice(payload);
        let t = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), body)
            .map_err(|_| DatagramError::Exhausted)?;
        tag.copy_from_slice(t.as_ref());
        Ok(len)
    }
}

/// One direction's receiving side.
pub struct Opener {
    key: LessSafeKey,
    session: u64,
    window: ReplayWindow,
}

impl Opener {
    /// The opener of `session`'s datagrams under `secret`, which it consumes.
    pub fn new(secret: OpeningKey, session: u64) -> Opener {
        Opener {
            key: key(&secret.0),
            session,
            window: ReplayWindow::default(),
        }
    }

    /// Authenticates and decrypts one datagram in place. Each counter is
    /// accepted once.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<Opened<'a>, DatagramError> {
        if datagram.len() < OVERHEAD {
            return Err(DatagramError::Short(datagram.len()));
        }
        let (header, body) = datagram.split_at_mut(HEADER_LEN);
        let kind = header[0];
        if kind != KIND_PACKET && kind != KIND_PROBE {
            return Err(DatagramError::Kind(kind));
        }
        if session_of(header) != Some(self.session) {
            return Err(DatagramError::Session);
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&header[9..17]);
        let counter = u64::from_be_bytes(c);
        if !self.window.fresh(counter) {
            return Err(DatagramError::Replay);
        }
        let plain = self
            .key
            .open_in_place(nonce(counter), Aad::from(&*header), body)
            .map_err(|_| DatagramError::Forged)?;
        let newest = counter >= self.window.top;
        self.window.mark(counter);
        Ok(Opened {
            kind,
            payload: plain,
            newest,
        })
    }
}

/// An authentic datagram.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// KIND_PACKET or KIND_PROBE.
    pub kind: u8,
    /// The payload, decrypted in place.
    pub payload: &'a [u8],
    /// Its counter is the highest seen yet: only such a datagram may move
    /// the peer's address (a replayed-late one from elsewhere may not).
    pub newest: bool,
}

/// Which of the last WINDOW counters have been seen.
#[derive(Default)]
struct ReplayWindow {
    /// Highest counter seen plus one; 0 before the first.
    top: u64,
    bits: [u64; (WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn slot(counter: u64) -> (usize, u64) {
        let i = counter % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn fresh(&self, counter: u64) -> bool {
        if counter >= self.top {
            return true;
        }
        if self.top - counter > WINDOW {
            return false;
        }
        let (w, b) = Self::slot(counter);
        self.bits[w] & b == 0
    }

    fn mark(&mut self, counter: u64) {
        if counter >= self.top {
            if counter - self.top >= WINDOW {
                self.bits = Default::default();
            } else {
                for c in self.top..counter {
                    let (w, b) = Self::slot(c);
                    self.bits[w] &= !b;
                }
            }
            self.top = counter + 1;
        }
        let (w, b) = Self::slot(counter);
        self.bits[w] |= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener) {
        (
            Sealer::new(SealingKey([7; 32]), 42),
            Opener::new(OpeningKey([7; 32]), 42),
        )
    }

    fn opened(kind: u8, payload: &[u8], newest: bool) -> Opened<'_> {
        Opened {
            kind,
            payload,
            newest,
        }
    }

    fn seal(s: &mut Sealer, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; payload.len() + OVERHEAD];
        let n = s.seal(KIND_PACKET, payload, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn round_trip() {
        let (mut s, mut o) = pair();
        for payload in [&b""[..], b"ping", &[0xab; MAX_PAYLOAD]] {
            let mut d = seal(&mut s, payload);
            assert_eq!(session_of(&d), Some(42));
            assert_eq!(o.open(&mut d).unwrap(), opened(KIND_PACKET, payload, true));
        }
        let mut out = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(
            s.seal(KIND_PACKET, &[0; MAX_PAYLOAD + 1], &mut out),
            Err(DatagramError::TooBig(MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn replays_and_old_counters_are_refused_reordering_is_not() {
        let (mut s, mut o) = pair();
        let sealed: Vec<Vec<u8>> = (0..2000).map(|_| seal(&mut s, b"x")).collect();
        let mut d = sealed[5].clone();
        o.open(&mut d).unwrap();
        let mut again = sealed[5].clone();
        assert_eq!(o.open(&mut again), Err(DatagramError::Replay));
        // Earlier ones still within the window arrive late: accepted once,
        // and not as the newest.
        let mut late = sealed[3].clone();
        assert!(!o.open(&mut late).unwrap().newest);
        let mut d = sealed[1500].clone();
        o.open(&mut d).unwrap();
        let mut old = sealed[400].clone();
        assert_eq!(o.open(&mut old), Err(DatagramError::Replay));
        let mut in_window = sealed[1000].clone();
        o.open(&mut in_window).unwrap();
        // Moving up slides the window: unseen counters still inside it
        // are taken, those that fell out are not.
        let mut far = sealed[1999].clone();
        o.open(&mut far).unwrap();
        let mut d = sealed[1499].clone();
        o.open(&mut d).unwrap();
        let mut d = sealed[975].clone();
        assert_eq!(o.open(&mut d), Err(DatagramError::Replay));
    }

    #[test]
    fn tampering_wrong_key_and_wrong_session_are_refused() {
        let (mut s, mut o) = pair();
        let good = seal(&mut s, b"payload");
        for i in [0, 3, 12, HEADER_LEN + 2, good.len() - 1] {
            let mut d = good.clone();
            d[i] ^= 1;
            assert!(o.open(&mut d).is_err(), "flipped byte {i}");
        }
        let mut other = Opener::new(OpeningKey([8; 32]), 42);
        assert_eq!(other.open(&mut good.clone()), Err(DatagramError::Forged));
        let mut elsewhere = Opener::new(OpeningKey([7; 32]), 43);
        assert_eq!(
            elsewhere.open(&mut good.clone()),
            Err(DatagramError::Session)
        );
        // A forged datagram does not burn its counter for the real one.
        let mut forged = good.clone();
        forged[HEADER_LEN] ^= 1;
        assert_eq!(o.open(&mut forged), Err(DatagramError::Forged));
        assert!(o.open(&mut good.clone()).is_ok());
        assert_eq!(o.open(&mut [1u8; 10]), Err(DatagramError::Short(10)));
        assert_eq!(session_of(&[1, 2]), None);
    }

    #[test]
    fn only_small_single_packets_fit() {
        let mut p = vec![0u8; 100];
        assert!(fits(&p));
        p[1] = crate::vnet::GSO_TCPV4;
        assert!(!fits(&p));
        assert!(!fits(&vec![0u8; MAX_PAYLOAD + 1]));
        assert!(fits(&vec![0u8; MAX_PAYLOAD]));
        assert!(!fits(&[0u8; 4]));
    }

    #[test]
    fn keys_travel_as_hex_and_never_print() {
        let offer = DatagramOffer {
            port: 443,
            session: 9,
            to_gateway: SealingKey([0xa5; 32]),
            to_client: key_pair().unwrap().1,
        };
        let json = serde_json::to_string(&offer).unwrap();
        assert!(json.contains(&"a5".repeat(32)));
        assert_eq!(serde_json::from_str::<DatagramOffer>(&json).unwrap(), offer);
        assert!(!format!("{offer:?}").contains("a5a5"));
        let short = json.replace(&"a5".repeat(32), "a5");
        assert!(serde_json::from_str::<DatagramOffer>(&short).is_err());
        let bad = json.replace(&"a5".repeat(32), &"zz".repeat(32));
        assert!(serde_json::from_str::<DatagramOffer>(&bad).is_err());
    }
}
