//! One client's data channel: the keys of each live key id, shared by the
//! path from the client (opens with any live key id) and the path to it
//! (seals with the newest key the client has).

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

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

struct Send {
    current: Option<Sealer>,
    pending: [Option<Sealer>; 8],
}

/// The keys of one client's data channel.
pub struct DataChannel {
    peer_id: u32,
    data_v2: AtomicBool,
    open: Mutex<[Option<Opener>; 8]>,
    send: Mutex<Send>,
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
            open: Mutex::new(Default::default()),
            send: Mutex::new(Send {
                current: None,
                pending: Default::default(),
            }),
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
        }
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

    /// Seals a payload for the client into `out`: the packet's length.
    pub fn seal(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, DataError> {
        let mut s = lock(&self.send);
        let sealer = s.current.as_mut().ok_or(DataError::Exhausted)?;
        sealer.seal(payload, out)
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
}
