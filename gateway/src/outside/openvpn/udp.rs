//! OpenVPN over UDP, on the packet thread: data packets find their client
//! by peer id and are opened and forwarded there; control packets go to
//! the client's driver task. A client's reset is answered statelessly
//! with a cookie (protocol::openvpn::cookie); only a packet that echoes it
//! from the same address creates a client.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::debug;

use super::driver::{self, Start, tls_factory};
use super::whereabouts::{Float, Maps, Whereabouts};
use super::{Client, Clients, RESET_PACKET_ID, Wire, unix_now};
use crate::endpoint::Endpoint;
use crate::endpoint::forward::Reply;
use crate::endpoint::handshakes::GlobalRate;
use crate::endpoint::sharded::ShardedMap;
use crate::outside::udp::{send_from, send_segmented};
use crate::protocol::openvpn::control::{Control, MAX_CONTROL_PACKET};
use crate::protocol::openvpn::cookie::CookieKey;
use crate::protocol::openvpn::packet::{
    self, Acks, ControlPacket, HARD_RESET_CLIENT_V2, HARD_RESET_SERVER_V2, SessionId,
};

/// Control packets waiting for a driver at most (each at most
/// MAX_CONTROL_PACKET bytes); more are dropped (the client sends them
/// again).
const CONTROL_QUEUE: usize = 16;

/// A client's UDP address and the gateway address it sends to.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Peer {
    addr: SocketAddr,
    local: Option<Ipv4Addr>,
}

/// Packets to one UDP client: datagrams from the address it last sent an
/// authentic packet from.
pub struct DatagramWire {
    socket: Arc<UdpSocket>,
    peer: Mutex<Peer>,
}

impl Wire for DatagramWire {
    fn send(&self, packet: &[u8]) -> bool {
        let p = *self.peer.lock().unwrap_or_else(|p| p.into_inner());
        send_from(&self.socket, packet, p.addr, p.local).is_ok()
    }

    /// One system call for the lot: the kernel cuts `packets` into
    /// datagrams of `stride` bytes (UDP segmentation offload).
    fn send_many(&self, packets: &[u8], stride: usize) -> bool {
        let p = *self.peer.lock().unwrap_or_else(|p| p.into_inner());
        match u16::try_from(stride) {
            Ok(segment) if packets.len() > stride => {
                send_segmented(&self.socket, packets, segment, p.addr, p.local).is_ok()
                    // A kernel or device without it: one by one.
                    || packets
                        .chunks(stride)
                        .all(|d| self.send(d))
            }
            _ => send_from(&self.socket, packets, p.addr, p.local).is_ok(),
        }
    }
}

struct UdpClient {
    client: Arc<Client>,
    wire: Arc<DatagramWire>,
    control: mpsc::Sender<Vec<u8>>,
    /// The client's control session id.
    sid: SessionId,
}

impl UdpClient {
    fn addr(&self) -> SocketAddr {
        self.wire
            .peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .addr
    }
}

impl Whereabouts for UdpClient {
    fn sid(&self) -> SessionId {
        self.sid
    }

    fn identity(&self) -> Option<String> {
        self.client.session.get().map(|s| s.common_name.clone())
    }
}

/// Cookie answers per second, all sources together (bursts of twice
/// that): what a flood of spoofed resets can make the endpoint send.
const COOKIE_ANSWERS_PER_SECOND: u32 = 4096;

/// The OpenVPN side of the UDP socket.
pub struct UdpServer {
    ep: Arc<Endpoint>,
    clients: Arc<Clients>,
    socket: Arc<UdpSocket>,
    cookie: CookieKey,
    cookie_rate: Mutex<GlobalRate>,
    runtime: tokio::runtime::Handle,
    /// Lock order: these maps, then a wire's peer. Read for every data
    /// packet by every packet thread: a reader lock, written only when a
    /// client comes, goes or moves.
    maps: RwLock<Maps<UdpClient>>,
    /// Clients by peer id, for data packets (DATA_V2 names it): in shards,
    /// so that packet threads serving different clients take different
    /// locks. Entered and left together with the maps.
    by_peer_id: ShardedMap<u32, Arc<UdpClient>>,
}

/// The session id of a control packet's sender: in the clear after the
/// opcode byte, with or without tls-crypt.
fn sender_sid(dgram: &[u8]) -> Option<SessionId> {
    dgram.get(1..1 + packet::SID_LEN)?.try_into().ok()
}

impl UdpServer {
    /// The server for `socket`; drivers run on `runtime`. None without
    /// system randomness for the cookie key.
    pub fn new(
        ep: Arc<Endpoint>,
        clients: Arc<Clients>,
        socket: Arc<UdpSocket>,
        runtime: tokio::runtime::Handle,
    ) -> Option<UdpServer> {
        Some(UdpServer {
            ep,
            clients,
            socket,
            cookie: CookieKey::new()?,
            cookie_rate: Mutex::new(GlobalRate::new(COOKIE_ANSWERS_PER_SECOND, Instant::now())),
            runtime,
            maps: RwLock::new(Maps::default()),
            by_peer_id: ShardedMap::default(),
        })
    }

    fn maps(&self) -> std::sync::RwLockWriteGuard<'_, Maps<UdpClient>> {
        self.maps.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(&self) -> std::sync::RwLockReadGuard<'_, Maps<UdpClient>> {
        self.maps.read().unwrap_or_else(|p| p.into_inner())
    }

    /// One datagram from `from` (sent to the gateway's `local` address).
    pub fn receive(
        self: &Arc<Self>,
        dgram: &mut [u8],
        from: SocketAddr,
        local: Option<Ipv4Addr>,
        reply: &mut Reply,
    ) {
        let Some(&first) = dgram.first() else {
            return;
        };
        let (opcode, _) = packet::split_first_byte(first);
        if packet::is_data(opcode) {
            let known = match opcode {
                packet::DATA_V2 => {
                    packet::data_v2_peer_id(dgram).and_then(|id| self.by_peer_id.get(&id))
                }
                _ => self.lookup().by_addr(from),
            };
            let Some(c) = known else {
                self.ep.drops.no_session.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let outcome = c.client.receive_data(&self.ep, dgram, reply);
            if outcome.authentic() {
                self.float(&c, Peer { addr: from, local });
            }
            return;
        }
        // No client sends larger ones: never queued, never buffered.
        if dgram.len() > MAX_CONTROL_PACKET {
            self.ep.drops.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(sid) = sender_sid(dgram) else {
            return;
        };
        let known = self.lookup().by_sid(from, sid);
        match known {
            // Full: dropped, the client sends it again.
            Some(c) => drop(c.control.try_send(dgram.to_vec())),
            None => self.first_contact(dgram, from, local),
        }
    }

    /// An authentic packet came from `now`: replies go there from now on,
    /// unless another certificate's session holds that address (a session
    /// of the same certificate there ends).
    fn float(&self, c: &Arc<UdpClient>, now: Peer) {
        let old = *c.wire.peer.lock().unwrap_or_else(|p| p.into_inner());
        if old == now {
            return;
        }
        let mut maps = self.maps();
        match maps.float(c, old.addr, now.addr) {
            Float::Refused => {
                self.ep.drops.spoofed.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %now.addr, "float refused: another session holds the address");
                return;
            }
            Float::Moved { displaced } => {
                if let Some(d) = displaced {
                    d.client
                        .stop("replaced by a new session of the same identity");
                }
            }
        }
        *c.wire.peer.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    /// A client was admitted: it holds its address from now on, and any
    /// other session there (a client restarted on the same port, a
    /// carrier NAT reusing it) ends.
    fn take_address(&self, c: &Arc<UdpClient>) {
        let mut maps = self.maps();
        for other in maps.take_address(c, c.addr()) {
            other
                .client
                .stop("replaced by a new session from the same address");
        }
    }

    /// A control packet from an address without a client of its session
    /// id: a reset gets the cookie (within the endpoint's rate of
    /// answers), the packet that echoes it creates the client (within the
    /// source's handshake rate: the echo proves the address). Anything
    /// else gets nothing.
    fn first_contact(self: &Arc<Self>, dgram: &[u8], from: SocketAddr, local: Option<Ipv4Addr>) {
        let crypt = self.clients.tls_crypt.as_ref();
        let plain = match crypt {
            // Not made with the tls-crypt key: no answer at all.
            Some(c) => match c.unwrap(dgram) {
                Ok((plain, _, _)) => plain,
                Err(_) => return,
            },
            None => dgram.to_vec(),
        };
        let Ok(p) = ControlPacket::parse(&plain) else {
            return;
        };
        let now = unix_now();
        if p.opcode == HARD_RESET_CLIENT_V2 && p.key_id == 0 && p.message_id == Some(0) {
            let allowed = self
                .cookie_rate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .allow(Instant::now());
            if allowed {
                let sid = self.cookie.session_id(from, &p.session_id, now);
                let answer = server_reset(&p, sid);
                let answer = match crypt {
                    Some(c) => c.wrap(&answer, RESET_PACKET_ID, now as u32),
                    None => answer,
                };
                let _ = send_from(&self.socket, &answer, from, local);
            }
            return;
        }
        if !self.cookie.admits(&p, from, now) {
            return;
        }
        let Some(server_sid) = p.remote_session_id else {
            return;
        };
        let within_rate = self
            .ep
            .source_rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(from.ip(), Instant::now());
        if !within_rate {
            return self
                .ep
                .failed_without_certificate(from, "over the source address's handshake rate");
        }
        let Ok(permit) = self.ep.handshakes.clone().try_acquire_owned() else {
            self.ep
                .failed_without_certificate(from, "too many handshakes in progress");
            return;
        };
        self.create(&p, server_sid, dgram, Peer { addr: from, local }, permit);
    }

    /// The client an echoed cookie makes, and its driver.
    fn create(
        self: &Arc<Self>,
        p: &ControlPacket<'_>,
        server_sid: SessionId,
        dgram: &[u8],
        peer: Peer,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let from = peer.addr;
        let control = match Control::after_cookie(
            p.session_id,
            server_sid,
            tls_factory(&self.ep),
            Instant::now(),
        ) {
            Ok(c) => c,
            Err(e) => return self.ep.failed_without_certificate(from, &e),
        };
        let wire = Arc::new(DatagramWire {
            socket: self.socket.clone(),
            peer: Mutex::new(peer),
        });
        let Some(client) = self.clients.add(|id| Client::new(id, wire.clone())) else {
            return self
                .ep
                .failed_without_certificate(from, "no free OpenVPN peer id");
        };
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let _ = tx.try_send(dgram.to_vec());
        let entry = Arc::new(UdpClient {
            client: client.clone(),
            wire,
            control: tx,
            sid: p.session_id,
        });
        {
            self.maps().insert(&entry, from);
            self.by_peer_id.insert(client.peer_id, entry.clone());
        }
        let on_admit: Box<dyn FnOnce() + Send + Sync> = {
            let me = Arc::downgrade(self);
            let entry = entry.clone();
            Box::new(move || {
                if let Some(me) = me.upgrade() {
                    me.take_address(&entry);
                }
            })
        };
        let start = Start {
            device: from,
            started: time::OffsetDateTime::now_utc(),
            udp: true,
            permit: Some(permit),
            wrapping: self.clients.wrapping(),
            on_admit: Some(on_admit),
        };
        let me = self.clone();
        self.runtime.spawn(async move {
            driver::drive(me.ep.clone(), client.clone(), control, rx, start).await;
            me.clients.remove(client.peer_id);
            let mut maps = me.maps();
            me.by_peer_id
                .remove_if(&client.peer_id, |c| Arc::ptr_eq(c, &entry));
            maps.remove(&entry);
        });
    }
}

/// The stateless answer to a reset: our reset (message 0) acknowledging
/// the client's, under the cookie as our session id.
fn server_reset(reset: &ControlPacket<'_>, sid: packet::SessionId) -> Vec<u8> {
    let mut acks = Acks::default();
    acks.push(0);
    let mut out = Vec::with_capacity(32);
    ControlPacket {
        opcode: HARD_RESET_SERVER_V2,
        key_id: 0,
        session_id: sid,
        acks,
        remote_session_id: Some(reset.session_id),
        message_id: Some(0),
        payload: b"",
    }
    .encode(&mut out);
    out
}
