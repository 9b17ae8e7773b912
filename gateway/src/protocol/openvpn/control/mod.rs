//! One OpenVPN client's control channel, sans-IO: control packets in,
//! control packets out and events for the shell. Each key id has its own
//! reliability state and TLS session (rustls, with the endpoint's client
//! verification); after the handshake, key method 2 runs over TLS, then
//! PUSH_REQUEST and EXIT arrive as NUL-terminated strings. A soft reset
//! from the client starts a new key id; the old one stays for a
//! transition window so packets in flight still open.

mod records;

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cvpn_pki::ClientIdentity;
use rustls::{ServerConfig, ServerConnection};

use self::records::{feed_tls, flush_tls, read_plaintext};
use super::keys::{self, Cipher, KEY_BLOCK_LEN, KeyError, PeerInfo, ServerKeys};
use super::packet::{
    ACK_V1, Acks, CONTROL_V1, ControlPacket, HARD_RESET_SERVER_V2, MAX_ACKS, SOFT_RESET_V1,
    SessionId,
};
use super::prf;
use super::reliable::Reliable;
use crate::tls::{Presented, PresentedSlot};

/// TLS bytes per control packet at most: with the largest header the
/// packet stays under OpenVPN's default tls-mtu of 1250.
pub const MAX_CONTROL_PAYLOAD: usize = 1100;
/// A key's handshake must finish within this (hand-window).
pub const HAND_WINDOW: Duration = Duration::from_secs(60);
/// How long a replaced key still opens packets (transition-window).
pub const TRANSITION_WINDOW: Duration = Duration::from_secs(60);
/// Control-channel plaintext buffered at most.
const MAX_PLAINTEXT: usize = 16 * 1024;
/// The server's options string, as a 2.6 server's OCC string reads.
const OPTIONS: &str =
    "V4,dev-type tun,link-mtu 1521,tun-mtu 1500,proto UDPv4,keysize 256,key-method 2,tls-server";

/// Makes a TLS configuration for a new key id (the endpoint's current
/// one: a reloaded CRL applies to renegotiations too).
pub type TlsFactory =
    Box<dyn Fn() -> Result<(Arc<ServerConfig>, PresentedSlot), String> + Send + Sync>;

/// What the shell must act on.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// The first key's TLS handshake and key exchange finished: the shell
    /// admits the client.
    Authenticated {
        /// From the client's certificate.
        identity: ClientIdentity,
        /// What the client said about itself.
        peer_info: PeerInfo,
        /// The negotiated data-channel cipher.
        cipher: Cipher,
        /// Data keys come from the TLS exporter (else the PRF).
        tls_ekm: bool,
    },
    /// Data-channel keys for a key id: open with them at once, seal with
    /// them after `Active`.
    Keys {
        /// The key id.
        key_id: u8,
        /// The cipher.
        cipher: Cipher,
        /// Both directions.
        keys: ServerKeys,
    },
    /// The client has the key id's keys: seal with them from now on.
    Active {
        /// The key id.
        key_id: u8,
    },
    /// A replaced key id's transition window is over: drop its keys.
    Retired {
        /// The key id.
        key_id: u8,
    },
    /// The client asked for its configuration.
    PushRequest,
    /// The client announced its exit.
    Exit,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Handshake,
    AwaitKeys,
    Active { announced: bool },
}

struct KeyState {
    key_id: u8,
    reliable: Reliable,
    tls: ServerConnection,
    presented: PresentedSlot,
    phase: Phase,
    plaintext: Vec<u8>,
    started: Instant,
    retire_at: Option<Instant>,
}

/// The control channel of one client.
pub struct Control {
    udp: bool,
    tls: TlsFactory,
    own_sid: SessionId,
    peer_sid: SessionId,
    /// Newest first; at most two (the primary and the lame duck).
    keys: Vec<KeyState>,
    events: VecDeque<Event>,
    identity: Option<ClientIdentity>,
    cipher: Option<Cipher>,
    tls_ekm: bool,
}

fn tls_failure(e: impl std::fmt::Display) -> String {
    format!("TLS handshake failed: {e}")
}

impl Control {
    /// A channel for a client whose reset the server answered statelessly
    /// (UDP): its session id was `server` in that answer.
    pub fn after_cookie(
        client: SessionId,
        server: SessionId,
        tls: TlsFactory,
        now: Instant,
    ) -> Result<Control, String> {
        let mut c = Control::new(true, tls, server, client);
        let key = c.key_state(0, Reliable::after_stateless_reset(true), now)?;
        c.keys.push(key);
        Ok(c)
    }

    /// A channel for a client whose reset `reset` (message 0, key id 0)
    /// opened a TCP connection; the server's reset is queued.
    pub fn from_reset(
        reset: &ControlPacket<'_>,
        own: SessionId,
        tls: TlsFactory,
        now: Instant,
    ) -> Result<Control, String> {
        let mut c = Control::new(false, tls, own, reset.session_id);
        let mut key = c.key_state(0, Reliable::new(false), now)?;
        key.reliable
            .receive(reset.message_id.unwrap_or(0), reset.opcode, b"");
        let _ = key.reliable.next_in_order();
        key.reliable.send(HARD_RESET_SERVER_V2, Vec::new());
        c.keys.push(key);
        Ok(c)
    }

    fn new(udp: bool, tls: TlsFactory, own_sid: SessionId, peer_sid: SessionId) -> Control {
        Control {
            udp,
            tls,
            own_sid,
            peer_sid,
            keys: Vec::new(),
            events: VecDeque::new(),
            identity: None,
            cipher: None,
            tls_ekm: false,
        }
    }

    fn key_state(&self, key_id: u8, reliable: Reliable, now: Instant) -> Result<KeyState, String> {
        let (config, presented) = (self.tls)()?;
        let tls = ServerConnection::new(config).map_err(tls_failure)?;
        Ok(KeyState {
            key_id,
            reliable,
            tls,
            presented,
            phase: Phase::Handshake,
            plaintext: Vec::new(),
            started: now,
            retire_at: None,
        })
    }

    /// The client's session id.
    pub fn peer_session_id(&self) -> SessionId {
        self.peer_sid
    }

    /// The certificate the client presented in its first handshake, as
    /// far as it could be read (for the log of a refusal).
    pub fn presented(&self) -> Option<Presented> {
        let first = self.keys.last()?;
        first
            .presented
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// One control packet from the client. Packets of another session or
    /// of an unknown key id are ignored; Err: why the session ends.
    pub fn receive(&mut self, p: &ControlPacket<'_>, now: Instant) -> Result<(), String> {
        if p.session_id != self.peer_sid || p.remote_session_id.is_some_and(|r| r != self.own_sid) {
            return Ok(());
        }
        let i = match self.keys.iter().position(|k| k.key_id == p.key_id) {
            Some(i) => i,
            None if p.opcode == SOFT_RESET_V1 && p.key_id != 0 => {
                self.renegotiate(p.key_id, now)?
            }
            None => return Ok(()),
        };
        let key = &mut self.keys[i];
        key.reliable.acknowledged(p.acks.as_slice());
        if let Some(id) = p.message_id {
            key.reliable.receive(id, p.opcode, p.payload);
        }
        while let Some((opcode, payload)) = key.reliable.next_in_order() {
            if opcode == CONTROL_V1 {
                feed_tls(key, &payload)?;
            }
        }
        self.progress(i, now)
    }

    /// A soft reset for `key_id`: a new key state in front, answered with
    /// our soft reset; the oldest beyond two is dropped.
    fn renegotiate(&mut self, key_id: u8, now: Instant) -> Result<usize, String> {
        let mut key = self.key_state(key_id, Reliable::new(self.udp), now)?;
        key.reliable.send(SOFT_RESET_V1, Vec::new());
        self.keys.insert(0, key);
        while self.keys.len() > 2 {
            if let Some(old) = self.keys.pop() {
                self.events.push_back(Event::Retired { key_id: old.key_id });
            }
        }
        Ok(0)
    }

    /// Moves key `i` on after new TLS input: the handshake's end, the key
    /// exchange, control messages.
    fn progress(&mut self, i: usize, now: Instant) -> Result<(), String> {
        flush_tls(&mut self.keys[i])?;
        if self.keys[i].phase == Phase::Handshake && !self.keys[i].tls.is_handshaking() {
            self.authenticated(i)?;
        }
        read_plaintext(&mut self.keys[i])?;
        if self.keys[i].phase == Phase::AwaitKeys {
            self.key_exchange(i)?;
        }
        if matches!(self.keys[i].phase, Phase::Active { .. }) {
            self.messages(i);
        }
        self.announce(now);
        Ok(())
    }

    fn authenticated(&mut self, i: usize) -> Result<(), String> {
        let key = &mut self.keys[i];
        let cert = key
            .tls
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        let identity = cvpn_pki::client_identity(cert).map_err(|e| e.to_string())?;
        if let Some(first) = &self.identity
            && first.common_name != identity.common_name
        {
            return Err("the certificate changed in a renegotiation".into());
        }
        key.phase = Phase::AwaitKeys;
        self.identity.get_or_insert(identity);
        Ok(())
    }

    /// Reads the client's key method 2 message, answers with ours and
    /// derives the key id's data-channel keys.
    fn key_exchange(&mut self, i: usize) -> Result<(), String> {
        let (client, consumed) = match keys::parse_client_keys(&self.keys[i].plaintext) {
            Ok(c) => c,
            Err(KeyError::Truncated) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        self.keys[i].plaintext.drain(..consumed);
        let first = self.cipher.is_none();
        let cipher = match self.cipher {
            Some(c) => c,
            None => keys::choose_cipher(&client.peer_info, &client.options)
                .ok_or("no data cipher in common (this endpoint takes AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305)")?,
        };
        if first {
            self.tls_ekm = client.peer_info.has(keys::iv_proto::TLS_KEY_EXPORT);
        }
        let (mut r1, mut r2) = ([0u8; 32], [0u8; 32]);
        getrandom::fill(&mut r1).map_err(|e| e.to_string())?;
        getrandom::fill(&mut r2).map_err(|e| e.to_string())?;
        let msg = keys::server_keys_message(&r1, &r2, OPTIONS);
        let key = &mut self.keys[i];
        key.tls
            .writer()
            .write_all(&msg)
            .map_err(|e| e.to_string())?;
        flush_tls(key)?;
        let block = if self.tls_ekm {
            key.tls
                .export_keying_material([0u8; KEY_BLOCK_LEN], keys::EKM_LABEL, None)
                .map_err(|e| format!("TLS exporter: {e}"))?
        } else {
            prf::key_block(&prf::Sources {
                pre_master: &client.pre_master,
                client_random1: &client.random1,
                client_random2: &client.random2,
                server_random1: &r1,
                server_random2: &r2,
                client_sid: &self.peer_sid,
                server_sid: &self.own_sid,
            })
        };
        key.phase = Phase::Active { announced: false };
        let key_id = key.key_id;
        if first {
            self.cipher = Some(cipher);
            let identity = self.identity.clone().ok_or("no identity")?;
            self.events.push_back(Event::Authenticated {
                identity,
                peer_info: client.peer_info,
                cipher,
                tls_ekm: self.tls_ekm,
            });
        }
        self.events.push_back(Event::Keys {
            key_id,
            cipher,
            keys: keys::server_keys(&block, cipher),
        });
        Ok(())
    }

    /// Control messages: NUL-terminated strings.
    fn messages(&mut self, i: usize) {
        let key = &mut self.keys[i];
        while let Some(end) = key.plaintext.iter().position(|&b| b == 0) {
            let msg: Vec<u8> = key.plaintext.drain(..=end).collect();
            let text = String::from_utf8_lossy(&msg[..end]);
            match text.trim_end() {
                "PUSH_REQUEST" => self.events.push_back(Event::PushRequest),
                "EXIT" => self.events.push_back(Event::Exit),
                _ => {}
            }
        }
    }

    /// Keys whose messages all arrived become the ones sealed with; the
    /// key they replace retires after the transition window.
    fn announce(&mut self, now: Instant) {
        for i in 0..self.keys.len() {
            let k = &mut self.keys[i];
            if k.phase == (Phase::Active { announced: false }) && k.reliable.all_acknowledged() {
                k.phase = Phase::Active { announced: true };
                self.events.push_back(Event::Active { key_id: k.key_id });
                for old in self.keys.iter_mut().skip(i + 1) {
                    old.retire_at.get_or_insert(now + TRANSITION_WINDOW);
                }
                return;
            }
        }
    }

    /// Sends a control message (PUSH_REPLY, RESTART, ...) on the newest
    /// key that finished its exchange.
    pub fn send_message(&mut self, text: &str) -> Result<(), String> {
        let Some(key) = self
            .keys
            .iter_mut()
            .find(|k| matches!(k.phase, Phase::Active { .. }))
        else {
            return Err("no control channel yet".into());
        };
        // One write, one TLS record: OpenVPN reads a message per record
        // and drops one without its NUL.
        let mut msg = Vec::with_capacity(text.len() + 1);
        msg.extend_from_slice(text.as_bytes());
        msg.push(0);
        key.tls
            .writer()
            .write_all(&msg)
            .map_err(|e| e.to_string())?;
        flush_tls(key)
    }

    /// The next control packet to send, if any is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        for key in &mut self.keys {
            let mut acks = Acks::default();
            for id in key.reliable.take_acks(MAX_ACKS) {
                acks.push(id);
            }
            let remote = (!acks.is_empty()).then_some(self.peer_sid);
            let mut out = Vec::new();
            if let Some(t) = key.reliable.poll_transmit(now) {
                ControlPacket {
                    opcode: t.opcode,
                    key_id: key.key_id,
                    session_id: self.own_sid,
                    acks,
                    remote_session_id: remote,
                    message_id: Some(t.id),
                    payload: t.payload,
                }
                .encode(&mut out);
                return Some(out);
            }
            if !acks.is_empty() {
                ControlPacket {
                    opcode: ACK_V1,
                    key_id: key.key_id,
                    session_id: self.own_sid,
                    acks,
                    remote_session_id: remote,
                    message_id: None,
                    payload: b"",
                }
                .encode(&mut out);
                return Some(out);
            }
        }
        None
    }

    /// When `on_timeout` must run next.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.keys
            .iter()
            .flat_map(|k| {
                let handshake =
                    (!matches!(k.phase, Phase::Active { .. })).then_some(k.started + HAND_WINDOW);
                [k.reliable.next_timeout(), handshake, k.retire_at]
            })
            .flatten()
            .min()
    }

    /// Retires keys past their transition window. Err: a handshake that
    /// did not finish within the hand window.
    pub fn on_timeout(&mut self, now: Instant) -> Result<(), String> {
        if self
            .keys
            .iter()
            .any(|k| !matches!(k.phase, Phase::Active { .. }) && now >= k.started + HAND_WINDOW)
        {
            return Err(format!(
                "TLS handshake did not finish within {} s",
                HAND_WINDOW.as_secs()
            ));
        }
        let events = &mut self.events;
        self.keys.retain(|k| {
            let keep = k.retire_at.is_none_or(|t| now < t);
            if !keep {
                events.push_back(Event::Retired { key_id: k.key_id });
            }
            keep
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
