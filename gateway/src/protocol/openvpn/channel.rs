//! One client's data channel: the keys of each live key id, shared by the
//! path from the client (opens with any live key id) and the path to it
//! (seals with the newest key the client has).

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::data::{DataError, OCC_EXIT, OCC_MAGIC, Opener, PING, Sealer};
use super::keys::{Cipher, ServerKeys};
use super::packet::split_first_byte;

/// What an opened data packet holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// An IP packet, at this range of the buffer.
    Packet(Range<usize>),
    /// The keepalive ping.
    Ping,
    /// An OCC explicit exit.
    Exit,
    /// Another OCC message (ignored).
    Occ,
}

/// The compression framing byte of `comp-lzo no` and stub profiles: the
/// payload follows uncompressed.
const NO_COMPRESS: u8 = 0xfa;
/// The same for `compress` (stub): the payload's first byte moved to its
/// end, this byte in its place.
const NO_COMPRESS_SWAP: u8 = 0xfb;
const FRAMING_NONE: u8 = 0;

struct Send {
    current: Option<Sealer>,
    pending: [Option<Sealer>; 8],
    /// The current key's wear was told to the driver.
    wear_told: bool,
}

/// The keys of one client's data channel.
pub struct DataChannel {
    peer_id: u32,
    data_v2: AtomicBool,
    /// The compression framing the client uses (it never compresses with
    /// this endpoint): learnt from its packets, used for ours.
    framing: AtomicU8,
    open: Mutex<[Option<Opener>; 8]>,
    /// The key id of the last packet from the client that opened (8:
    /// none yet).
    client_key: AtomicU8,
    send: Mutex<Send>,
    /// Told once when the key sealed with wears out: the driver
    /// renegotiates at once, not at its next timer.
    wear: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Keys and counters stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DataChannel {
    /// A channel without keys; DATA_V2 toward the client with `peer_id`
    /// unless `use_data_v2` says otherwise.
    pub fn new(peer_id: u32) -> DataChannel {
        DataChannel {
            peer_id,
            data_v2: AtomicBool::new(true),
            framing: AtomicU8::new(FRAMING_NONE),
            open: Mutex::new(Default::default()),
            client_key: AtomicU8::new(8),
            send: Mutex::new(Send {
                current: None,
                pending: Default::default(),
                wear_told: false,
            }),
            wear: tokio::sync::Notify::new(),
        }
    }

    /// Whether the client takes DATA_V2 (else DATA_V1); before the first
    /// `install`.
    pub fn use_data_v2(&self, yes: bool) {
        self.data_v2.store(yes, Ordering::Relaxed);
    }

    /// Installs a key id's keys: packets with it open at once; sealing
    /// moves to it on `activate`.
    pub fn install(&self, key_id: u8, cipher: Cipher, keys: &ServerKeys) {
        let k = usize::from(key_id & 7);
        lock(&self.open)[k] = Some(Opener::new(cipher, &keys.decrypt));
        let peer_id = self.data_v2.load(Ordering::Relaxed).then_some(self.peer_id);
        lock(&self.send).pending[k] = Some(Sealer::new(cipher, &keys.encrypt, key_id, peer_id));
    }

    /// Seals with `key_id` from now on.
    pub fn activate(&self, key_id: u8) {
        let mut s = lock(&self.send);
        if let Some(sealer) = s.pending[usize::from(key_id & 7)].take() {
            s.current = Some(sealer);
            s.wear_told = false;
        }
    }

    /// The key id sealed with, if any.
    pub fn active_key(&self) -> Option<u8> {
        lock(&self.send).current.as_ref().map(Sealer::key_id)
    }

    /// Forgets a retired key id's opener.
    pub fn retire(&self, key_id: u8) {
        lock(&self.open)[usize::from(key_id & 7)] = None;
    }

    /// Whether the key sealed with is near its end (time to renegotiate).
    pub fn worn_out(&self) -> bool {
        lock(&self.send)
            .current
            .as_ref()
            .is_some_and(Sealer::worn_out)
    }

    /// The key id the client last sent an authentic packet with.
    pub fn client_key(&self) -> Option<u8> {
        Some(self.client_key.load(Ordering::Relaxed)).filter(|&k| k < 8)
    }

    /// Waits until the key sealed with wears out.
    pub async fn worn(&self) {
        self.wear.notified().await;
    }

    /// Opens a data packet from the client in place.
    pub fn open(&self, packet: &mut [u8]) -> Result<Opened, DataError> {
        let (_, key_id) = split_first_byte(*packet.first().ok_or(DataError::Truncated)?);
        let range = {
            let mut open = lock(&self.open);
            let opener = open[usize::from(key_id)]
                .as_mut()
                .ok_or(DataError::Authentication)?;
            opener.open(packet)?
        };
        self.client_key.store(key_id, Ordering::Relaxed);
        let range = self.unframe(packet, range);
        let payload = &packet[range.clone()];
        Ok(if payload == PING {
            Opened::Ping
        } else if payload.len() == OCC_MAGIC.len() + 1 && payload.starts_with(&OCC_MAGIC) {
            if payload[OCC_MAGIC.len()] == OCC_EXIT {
                Opened::Exit
            } else {
                Opened::Occ
            }
        } else {
            Opened::Packet(range)
        })
    }

    /// Takes the compression framing off an opened payload (IPv4 starts
    /// with 0x4_, a ping with 0x2a, OCC with 0x28: a framing byte is never
    /// a payload's first) and notes it for what goes to the client.
    fn unframe(&self, packet: &mut [u8], range: Range<usize>) -> Range<usize> {
        match packet.get(range.start) {
            Some(&NO_COMPRESS) => {
                self.framing.store(NO_COMPRESS, Ordering::Relaxed);
                range.start + 1..range.end
            }
            Some(&NO_COMPRESS_SWAP) if range.len() > 1 => {
                self.framing.store(NO_COMPRESS_SWAP, Ordering::Relaxed);
                packet[range.start] = packet[range.end - 1];
                range.start..range.end - 1
            }
            _ => range,
        }
    }

    /// Seals a payload for the client into `out`, framed as the client
    /// frames its own: the packet's length.
    pub fn seal(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, DataError> {
        let mut s = lock(&self.send);
        let s = &mut *s;
        let sealer = s.current.as_mut().ok_or(DataError::Exhausted)?;
        if !s.wear_told && sealer.worn_out() {
            s.wear_told = true;
            self.wear.notify_one();
        }
        match (self.framing.load(Ordering::Relaxed), payload.split_first()) {
            (NO_COMPRESS, _) => sealer.seal_parts(&[&[NO_COMPRESS], payload], out),
            (NO_COMPRESS_SWAP, Some((first, rest))) => sealer.seal_parts(
                &[&[NO_COMPRESS_SWAP], rest, std::slice::from_ref(first)],
                out,
            ),
            _ => sealer.seal(payload, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openvpn::keys::{KEY_BLOCK_LEN, server_keys};

    /// The client's side of a key block: it seals with what the server
    /// opens with.
    fn client(block: &[u8; KEY_BLOCK_LEN], key_id: u8) -> (Sealer, Opener) {
        let k = server_keys(block, Cipher::Aes256Gcm);
        (
            Sealer::new(Cipher::Aes256Gcm, &k.decrypt, key_id, Some(5)),
            Opener::new(Cipher::Aes256Gcm, &k.encrypt),
        )
    }

    #[test]
    fn keys_rotate_with_a_transition() {
        let b0 = [1u8; KEY_BLOCK_LEN];
        let b1 = [2u8; KEY_BLOCK_LEN];
        let ch = DataChannel::new(5);
        let mut out = [0u8; 256];
        // No key yet: nothing is sealed.
        assert!(ch.seal(b"x", &mut out).is_err());
        ch.install(0, Cipher::Aes256Gcm, &server_keys(&b0, Cipher::Aes256Gcm));
        assert!(ch.seal(b"x", &mut out).is_err());
        ch.activate(0);
        let (mut c0, mut o0) = client(&b0, 0);
        let n = ch.seal(b"to client", &mut out).unwrap();
        let r = o0.open(&mut out[..n]).unwrap();
        assert_eq!(&out[r], b"to client");

        // A new key id: the old one still opens until retired.
        ch.install(1, Cipher::Aes256Gcm, &server_keys(&b1, Cipher::Aes256Gcm));
        let (mut c1, _) = client(&b1, 1);
        let n = c1.seal(&[0x45; 20], &mut out).unwrap();
        assert_eq!(ch.open(&mut out[..n]).unwrap(), Opened::Packet(24..44));
        let n = c0.seal(&PING, &mut out).unwrap();
        assert_eq!(ch.open(&mut out[..n]).unwrap(), Opened::Ping);
        ch.activate(1);
        ch.retire(0);
        let n = c0.seal(&[0x45; 20], &mut out).unwrap();
        assert!(ch.open(&mut out[..n]).is_err());
        let mut exit = OCC_MAGIC.to_vec();
        exit.push(OCC_EXIT);
        let n = c1.seal(&exit, &mut out).unwrap();
        assert_eq!(ch.open(&mut out[..n]).unwrap(), Opened::Exit);
        assert!(ch.open(&mut []).is_err());
    }

    #[test]
    fn compression_framing_is_learnt_and_answered_in_kind() {
        let b = [3u8; KEY_BLOCK_LEN];
        let ch = DataChannel::new(5);
        ch.install(0, Cipher::Aes256Gcm, &server_keys(&b, Cipher::Aes256Gcm));
        ch.activate(0);
        let (mut c, mut o) = client(&b, 0);
        let mut out = [0u8; 256];
        let ip = [0x45, 1, 2, 3];
        // `compress` (stub): swapped; the answer is swapped too.
        let n = c
            .seal(&[NO_COMPRESS_SWAP, 1, 2, 3, 0x45], &mut out)
            .unwrap();
        let Opened::Packet(r) = ch.open(&mut out[..n]).unwrap() else {
            panic!()
        };
        assert_eq!(&out[r], &ip);
        let n = ch.seal(&ip, &mut out).unwrap();
        let r = o.open(&mut out[..n]).unwrap();
        assert_eq!(&out[r], &[NO_COMPRESS_SWAP, 1, 2, 3, 0x45]);
        // `comp-lzo no`: a prefix, pings included.
        let mut framed = vec![NO_COMPRESS];
        framed.extend_from_slice(&PING);
        let n = c.seal(&framed, &mut out).unwrap();
        assert_eq!(ch.open(&mut out[..n]).unwrap(), Opened::Ping);
        let n = ch.seal(&ip, &mut out).unwrap();
        let r = o.open(&mut out[..n]).unwrap();
        assert_eq!(&out[r], &[NO_COMPRESS, 0x45, 1, 2, 3]);
    }
}
