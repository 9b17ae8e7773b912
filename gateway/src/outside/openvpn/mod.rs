//! The shells of OpenVPN clients: what each client's driver task and the
//! path of its data packets share, the endpoint session's link toward
//! it, and the registry of clients (peer ids, and UDP source addresses).
//! The TCP and UDP specifics are in tcp.rs and udp.rs; the driver of a
//! client's control channel in driver.rs.

pub mod driver;
pub mod link;
pub mod tcp;
pub mod udp;
pub mod whereabouts;

pub use link::{OpenVpnLink, Wire};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use cvpn_proto::VNET_HDR_LEN;
use tracing::debug;

use crate::endpoint::Endpoint;
use crate::endpoint::forward::Reply;
use crate::endpoint::session::Session;
use crate::protocol::openvpn::channel::{DataChannel, Opened};
use crate::protocol::openvpn::tls_crypt::{Replay, TlsCrypt};

/// What the shells know of one OpenVPN client.
pub struct Client {
    /// Its peer id (DATA_V2).
    pub peer_id: u32,
    /// Its data-channel keys.
    pub data: Arc<DataChannel>,
    /// Its packets' way out.
    pub wire: Arc<dyn Wire>,
    /// The endpoint session, once admitted.
    pub session: OnceLock<Arc<Session>>,
    base: Instant,
    last_heard_ms: AtomicU64,
    /// Why the shell ends the client (before or after admission).
    stop: Mutex<Option<String>>,
    stopped: tokio::sync::Notify,
}

impl Client {
    /// A client not yet admitted.
    pub fn new(peer_id: u32, wire: Arc<dyn Wire>) -> Client {
        Client {
            peer_id,
            data: Arc::new(DataChannel::new(peer_id)),
            wire,
            session: OnceLock::new(),
            base: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            stop: Mutex::new(None),
            stopped: tokio::sync::Notify::new(),
        }
    }

    /// Ends the client's driver, authenticated or not, for `reason`.
    pub fn stop(&self, reason: &str) {
        let mut stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        stop.get_or_insert_with(|| reason.to_string());
        drop(stop);
        self.stopped.notify_one();
    }

    /// Waits for `stop`; returns its reason.
    pub async fn stopped(&self) -> String {
        loop {
            let notified = self.stopped.notified();
            if let Some(r) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                return r;
            }
            notified.await;
        }
    }

    /// Notes that an authentic packet came from the client.
    pub fn heard(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_heard_ms.store(ms, Ordering::Relaxed);
    }

    /// When an authentic packet last came from the client.
    pub fn last_heard(&self) -> Instant {
        self.base + std::time::Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed))
    }

    /// One data packet from the client, opened in place and handed to
    /// the endpoint's policy.
    pub fn receive_data(&self, ep: &Endpoint, packet: &mut [u8], reply: &mut Reply) -> Received {
        let Some(session) = self.session.get() else {
            return Received::Dropped;
        };
        match self.data.open(packet) {
            Ok(Opened::Packet(range)) => {
                self.heard();
                // The tag and packet id before the payload are spent: the
                // virtio-net header the endpoint takes goes there.
                let start = range.start - VNET_HDR_LEN;
                packet[start..range.start].fill(0);
                let policy = ep.policy.load();
                ep.forward(session, &policy, &packet[start..range.end], reply);
                Received::Authentic
            }
            Ok(Opened::Ping) | Ok(Opened::Occ) => {
                self.heard();
                Received::Authentic
            }
            Ok(Opened::Exit) => {
                session.terminate("client disconnected");
                Received::Exit
            }
            Err(e) => {
                debug!(connection_id = %session.connection_id, error = %e, "OpenVPN data packet dropped");
                ep.drops.malformed.fetch_add(1, Ordering::Relaxed);
                Received::Dropped
            }
        }
    }
}

/// What became of a data packet from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Authentic: forwarded, or a keepalive.
    Authentic,
    /// Authentic: the client's explicit exit.
    Exit,
    /// Not authentic, replayed, or before the session: dropped.
    Dropped,
}

impl Received {
    /// The packet came from the client.
    pub fn authentic(&self) -> bool {
        *self != Received::Dropped
    }
}

/// A client's tls-crypt wrapping: the endpoint's key, the packet ids of
/// what the server sends, and those the client's packets took.
pub struct Wrapping {
    crypt: Arc<TlsCrypt>,
    next_id: u32,
    time: u32,
    replay: Replay,
}

/// Packet ids of the stateless reset answer; a session's start above it.
pub const RESET_PACKET_ID: u32 = 1;

/// Now in Unix seconds, as tls-crypt's packet ids and the cookie take it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Wrapping {
    /// A client's wrapping under the endpoint's key.
    pub fn new(crypt: Arc<TlsCrypt>) -> Wrapping {
        Wrapping {
            crypt,
            // Past the id the reset answer took at the same second.
            next_id: 0x100,
            time: unix_now() as u32,
            replay: Replay::default(),
        }
    }

    /// Wraps a control packet for the client.
    pub fn wrap(&mut self, packet: &[u8]) -> Vec<u8> {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.crypt.wrap(packet, self.next_id, self.time)
    }

    /// Unwraps a control packet from the client; None if it was not
    /// made with the key or is a replay.
    pub fn unwrap(&mut self, wire: &[u8]) -> Option<Vec<u8>> {
        let (plain, id, time) = self.crypt.unwrap(wire).ok()?;
        self.replay.accept(time, id).then_some(plain)
    }
}

/// Peer ids are 24 bits.
const PEER_IDS: u32 = 1 << 24;

/// The OpenVPN clients of the endpoint, by peer id, and the tls-crypt
/// key they must use, if the endpoint has one.
#[derive(Default)]
pub struct Clients {
    next_peer_id: AtomicU32,
    by_peer_id: Mutex<HashMap<u32, Arc<Client>>>,
    /// The endpoint's tls-crypt key.
    pub tls_crypt: Option<Arc<TlsCrypt>>,
}

impl Clients {
    /// No client yet; control packets wrapped with `tls_crypt` if given.
    pub fn new(tls_crypt: Option<TlsCrypt>) -> Clients {
        Clients {
            tls_crypt: tls_crypt.map(Arc::new),
            ..Clients::default()
        }
    }

    /// A new client's wrapping, if the endpoint has a key.
    pub fn wrapping(&self) -> Option<Wrapping> {
        self.tls_crypt.clone().map(Wrapping::new)
    }

    /// Registers a client made by `make` with a peer id no other client
    /// has; None if all are taken.
    pub fn add(&self, make: impl FnOnce(u32) -> Client) -> Option<Arc<Client>> {
        let mut map = self.by_peer_id.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() as u32 >= PEER_IDS {
            return None;
        }
        let id = loop {
            let id = self.next_peer_id.fetch_add(1, Ordering::Relaxed) % PEER_IDS;
            if !map.contains_key(&id) {
                break id;
            }
        };
        let c = Arc::new(make(id));
        map.insert(id, c.clone());
        Some(c)
    }

    /// Forgets a client.
    pub fn remove(&self, peer_id: u32) {
        let mut map = self.by_peer_id.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&peer_id);
    }
}
