//! One OpenVPN client's control channel, sans-IO: control packets in,
//! control packets out and events for the shell. Each key id has its own
//! reliability state and TLS session (rustls, with the endpoint's client
//! verification); after the handshake, key method 2 runs over TLS, then
//! PUSH_REQUEST and EXIT arrive as NUL-terminated strings.
//!
//! Keys follow OpenVPN's state machine (ssl.c): a renegotiation (a soft
//! reset from the client, or the server's own after `reneg` or when the
//! data channel wears out) starts only once the primary key is fully
//! established, with the next key id in the server's sequence (1..=7,
//! then 1 again); the primary becomes the lame duck, which still opens
//! packets for the transition window and never displaces a primary.

mod event;
mod exchange;
mod records;

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cvpn_pki::ClientIdentity;
use rustls::{ServerConfig, ServerConnection};

pub use self::event::Event;
pub use self::exchange::NO_SHARED_CIPHER;
pub use self::records::CLOSED;
use self::records::{feed_tls, flush_tls, read_plaintext};
use super::keys::Cipher;
use super::packet::{
    ACK_V1, Acks, ControlPacket, HARD_RESET_SERVER_V2, MAX_ACKS, SOFT_RESET_V1, SessionId,
};
use super::reliable::Reliable;
use crate::tls::{Presented, PresentedSlot};

/// TLS bytes per control packet sent at most: with the largest header
/// the packet stays under OpenVPN's default tls-mtu of 1250.
pub const MAX_CONTROL_PAYLOAD: usize = 1100;
/// TLS bytes a received control packet may carry at most: OpenVPN 2.6
/// sends control packets of at most its tls-mtu (1250 bytes) and OpenVPN
/// 3 of at most 1280 bytes wrapped, so a larger one is no client's.
pub const MAX_RECEIVED_PAYLOAD: usize = 1250;
/// A received control packet's wire size at most (the payload, the
/// largest header and a tls-crypt wrapping): the shells drop larger ones
/// before they queue them.
pub const MAX_CONTROL_PACKET: usize = MAX_RECEIVED_PAYLOAD + 64 + 64;
/// A key's handshake must finish within this (hand-window).
pub const HAND_WINDOW: Duration = Duration::from_secs(60);
/// How long a replaced key still opens packets (transition-window).
pub const TRANSITION_WINDOW: Duration = Duration::from_secs(60);
/// Control-channel plaintext buffered at most.
const MAX_PLAINTEXT: usize = 16 * 1024;

/// Makes a TLS configuration for a new key id (the endpoint's current
/// one: a reloaded CRL applies to renegotiations too).
pub type TlsFactory =
    Box<dyn Fn() -> Result<(Arc<ServerConfig>, PresentedSlot), String> + Send + Sync>;

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
    /// When the client took its keys (the renegotiation timer's start).
    established: Option<Instant>,
    retire_at: Option<Instant>,
}

/// The transport the channel runs over, as the OCC options string names
/// it and as retransmission needs it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    /// UDP: messages are sent again until acknowledged.
    Udp,
    /// TCP: the stream delivers.
    Tcp,
}

/// The control channel of one client.
pub struct Control {
    transport: Transport,
    tls: TlsFactory,
    own_sid: SessionId,
    peer_sid: SessionId,
    /// Newest first; at most two (the primary and the lame duck).
    keys: Vec<KeyState>,
    /// The key id of the next renegotiation.
    next_key_id: u8,
    /// The server renegotiates this long after a key was established.
    reneg: Option<Duration>,
    /// The key id the client last sent data with (the shell tells).
    client_key: Option<u8>,
    events: VecDeque<Event>,
    identity: Option<ClientIdentity>,
    cipher: Option<Cipher>,
    tls_ekm: bool,
    /// Refused: nothing but acknowledgements is taken any more.
    refused: bool,
}

fn tls_failure(e: impl std::fmt::Display) -> String {
    format!("TLS handshake failed: {e}")
}

/// The key id after `id`: 0 is the first key's only.
fn following(id: u8) -> u8 {
    if id >= 7 { 1 } else { id + 1 }
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
        let mut c = Control::new(Transport::Udp, tls, server, client);
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
        let mut c = Control::new(Transport::Tcp, tls, own, reset.session_id);
        let mut key = c.key_state(0, Reliable::new(false), now)?;
        key.reliable
            .receive(reset.message_id.unwrap_or(0), reset.opcode, b"");
        let _ = key.reliable.next_in_order();
        key.reliable.send(HARD_RESET_SERVER_V2, Vec::new());
        c.keys.push(key);
        Ok(c)
    }

    fn new(transport: Transport, tls: TlsFactory, own_sid: SessionId, peer_sid: SessionId) -> Self {
        Control {
            transport,
            tls,
            own_sid,
            peer_sid,
            keys: Vec::new(),
            next_key_id: 1,
            reneg: None,
            client_key: None,
            events: VecDeque::new(),
            identity: None,
            cipher: None,
            tls_ekm: false,
            refused: false,
        }
    }

    /// The server renegotiates `after` this long with every key (OpenVPN's
    /// reneg-sec); None: only when the data channel wears out.
    pub fn set_reneg(&mut self, after: Option<Duration>) {
        self.reneg = after.filter(|d| !d.is_zero());
    }

    /// The client's data packets use `key_id` now.
    pub fn client_sends_with(&mut self, key_id: Option<u8>) {
        self.client_key = key_id;
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
            established: None,
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

    /// The TLS version the first handshake settled on, if it got so far.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.keys.last()?.tls.protocol_version()
    }

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// One control packet from the client. Ok(false): not this session's
    /// (another session id, or too large), ignored; Ok(true): the
    /// session's, which keeps it alive. Err: why the session ends.
    pub fn receive(&mut self, p: &ControlPacket<'_>, now: Instant) -> Result<bool, String> {
        if p.session_id != self.peer_sid
            || p.remote_session_id.is_some_and(|r| r != self.own_sid)
            || p.payload.len() > MAX_RECEIVED_PAYLOAD
        {
            return Ok(false);
        }
        let i = match self.keys.iter().position(|k| k.key_id == p.key_id) {
            Some(i) => i,
            None if p.opcode == SOFT_RESET_V1 && p.key_id == self.next_key_id => {
                if !self.new_key(now)? {
                    return Ok(true);
                }
                0
            }
            // A stale or out-of-sequence key id: dropped (ssl.c's
            // "key_id mismatch").
            None => return Ok(true),
        };
        let key = &mut self.keys[i];
        key.reliable.acknowledged(p.acks.as_slice());
        if self.refused {
            return Ok(true);
        }
        if let Some(id) = p.message_id {
            key.reliable.receive(id, p.opcode, p.payload);
        }
        while let Some((opcode, payload)) = key.reliable.next_in_order() {
            if opcode == super::packet::CONTROL_V1 {
                feed_tls(key, &payload)?;
            }
        }
        self.progress(i, now)?;
        Ok(true)
    }

    /// Whether a new key may start: the primary is established (its
    /// keys are with the client), so the lame duck it replaces is done.
    fn may_renegotiate(&self) -> bool {
        !self.refused
            && self.cipher.is_some()
            && self
                .keys
                .first()
                .is_some_and(|k| k.phase == Phase::Active { announced: true })
    }

    /// Whether the server may start a renegotiation itself: as for the
    /// client's, and the client has moved its data to the primary key (a
    /// client switches some time after a key is ready, OpenVPN 3 up to a
    /// minute later; retiring the key it still sends with would cut it off).
    fn may_start_renegotiation(&self) -> bool {
        self.may_renegotiate()
            && (self.keys.len() == 1 || self.client_key == self.keys.first().map(|k| k.key_id))
    }

    /// The server's own renegotiation (its timer, or a worn-out key):
    /// false (nothing done) until it may start.
    pub fn renegotiate(&mut self, now: Instant) -> Result<bool, String> {
        if !self.may_start_renegotiation() {
            return Ok(false);
        }
        self.new_key(now)
    }

    /// Starts a key with the next key id, in front, with our soft reset
    /// queued; the primary becomes the lame duck and the old lame duck
    /// retires. False (nothing done) while the primary is not established.
    fn new_key(&mut self, now: Instant) -> Result<bool, String> {
        if !self.may_renegotiate() {
            return Ok(false);
        }
        let id = self.next_key_id;
        let mut key = self.key_state(id, Reliable::new(self.transport == Transport::Udp), now)?;
        key.reliable.send(SOFT_RESET_V1, Vec::new());
        self.next_key_id = following(id);
        self.keys.insert(0, key);
        while self.keys.len() > 2 {
            if let Some(old) = self.keys.pop() {
                self.events.push_back(Event::Retired { key_id: old.key_id });
            }
        }
        Ok(true)
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

    /// Keys whose messages all arrived become the ones sealed with; the
    /// key they replace retires after the transition window.
    fn announce(&mut self, now: Instant) {
        for i in 0..self.keys.len() {
            let k = &mut self.keys[i];
            if k.phase == (Phase::Active { announced: false }) && k.reliable.all_acknowledged() {
                k.phase = Phase::Active { announced: true };
                k.established = Some(now);
                if !self.refused {
                    self.events.push_back(Event::Active { key_id: k.key_id });
                }
                for old in self.keys.iter_mut().skip(i + 1) {
                    old.retire_at.get_or_insert(now + TRANSITION_WINDOW);
                }
                return;
            }
        }
    }

    /// Sends a control message (PUSH_REPLY, AUTH_FAILED, RESTART, ...)
    /// on the newest key that finished its exchange.
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

    /// Everything sent was acknowledged (a last message was taken).
    pub fn all_acknowledged(&self) -> bool {
        self.keys.iter().all(|k| k.reliable.all_acknowledged())
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

    /// When the primary key is due for the server's renegotiation.
    fn reneg_due(&self) -> Option<Instant> {
        let after = self.reneg.filter(|_| !self.refused)?;
        let primary = self.keys.first()?;
        primary.established.map(|t| t + after)
    }

    /// The same, unless the renegotiation must wait for the client (then
    /// the shell's regular timer looks again).
    fn reneg_timer(&self) -> Option<Instant> {
        self.reneg_due().filter(|_| self.may_start_renegotiation())
    }

    /// When `on_timeout` must run next.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.keys
            .iter()
            .flat_map(|k| {
                let handshake =
                    (!matches!(k.phase, Phase::Active { .. })).then_some(k.started + HAND_WINDOW);
                let retire = k.retire_at.filter(|_| self.client_key != Some(k.key_id));
                [k.reliable.next_timeout(), handshake, retire]
            })
            .chain([self.reneg_timer()])
            .flatten()
            .min()
    }

    /// Retires keys past their transition window and renegotiates when
    /// the primary key is due. Err: a handshake that did not finish
    /// within the hand window.
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
        let client_key = self.client_key;
        // A key the client still sends with stays (it moves to the new
        // one in its own time).
        self.keys.retain(|k| {
            let keep = k.retire_at.is_none_or(|t| now < t) || client_key == Some(k.key_id);
            if !keep {
                events.push_back(Event::Retired { key_id: k.key_id });
            }
            keep
        });
        if self.reneg_due().is_some_and(|t| now >= t) {
            self.renegotiate(now)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
