//! OpenVPN over UDP, on the packet thread: data packets find their client
//! by peer id and are opened and forwarded there; control packets go to
//! the client's driver task. A client's reset is answered statelessly
//! with a cookie (protocol::openvpn::cookie); only a packet that echoes it
//! from the same address creates a client.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::debug;

use super::driver::{self, Start, tls_factory};
use super::{Client, Clients, RESET_PACKET_ID, Wire, unix_now};
use crate::endpoint::Endpoint;
use crate::endpoint::forward::Reply;
use crate::endpoint::handshakes::GlobalRate;
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

    fn common_name(&self) -> Option<&str> {
        self.client.session.get().map(|s| s.common_name.as_str())
    }
}

/// Who is where. Lock order: these maps, then a wire's peer.
#[derive(Default)]
struct Maps {
    /// The client that holds each address: the one admitted last there
    /// (DATA_V1 packets, and no other client floats onto it).
    by_addr: HashMap<SocketAddr, Arc<UdpClient>>,
    /// Control packets go by address and the client's session id: a new
    /// session from a known address is a new client, not the old one's.
    by_sid: HashMap<(SocketAddr, SessionId), Arc<UdpClient>>,
    by_peer_id: HashMap<u32, Arc<UdpClient>>,
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
    maps: Mutex<Maps>,
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
            maps: Mutex::new(Maps::default()),
        })
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
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
            let known = {
                let maps = self.maps();
                match opcode {
                    packet::DATA_V2 => packet::data_v2_peer_id(dgram)
                        .and_then(|id| maps.by_peer_id.get(&id).cloned()),
                    _ => maps.by_addr.get(&from).cloned(),
                }
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
        let known = self.maps().by_sid.get(&(from, sid)).cloned();
        match known {
            // Full: dropped, the client sends it again.
            Some(c) => drop(c.control.try_send(dgram.to_vec())),
            None => self.first_contact(dgram, from, local),
        }
    }

    /// An authentic packet came from `now`: replies go there from now on,
    /// unless another client holds that address. As OpenVPN's server
    /// (multi_process_float), a session of another certificate keeps it;
    /// one of the same certificate is ended.
    fn float(&self, c: &Arc<UdpClient>, now: Peer) {
        if *c.wire.peer.lock().unwrap_or_else(|p| p.into_inner()) == now {
            return;
        }
        let mut maps = self.maps();
        if let Some(holder) = maps.by_addr.get(&now.addr).cloned()
            && !Arc::ptr_eq(&holder, c)
        {
            if holder.common_name() != c.common_name() || c.common_name().is_none() {
                self.ep.drops.spoofed.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %now.addr, "float refused: another session holds the address");
                return;
            }
            holder
                .client
                .stop("replaced by a new session of the same identity");
        }
        let old = std::mem::replace(
            &mut *c.wire.peer.lock().unwrap_or_else(|p| p.into_inner()),
            now,
        );
        if maps
            .by_addr
            .get(&old.addr)
            .is_some_and(|h| Arc::ptr_eq(h, c))
        {
            maps.by_addr.remove(&old.addr);
        }
        maps.by_addr.insert(now.addr, c.clone());
        maps.by_sid.remove(&(old.addr, c.sid));
        maps.by_sid.insert((now.addr, c.sid), c.clone());
    }

    /// A client was admitted: it holds its address from now on, and any
    /// other session there (a client restarted on the same port, a
    /// carrier NAT reusing it) ends.
    fn take_address(&self, c: &Arc<UdpClient>) {
        let mut maps = self.maps();
        let addr = c.addr();
        for other in maps.by_sid.values() {
            if !Arc::ptr_eq(other, c) && other.addr() == addr {
                other
                    .client
                    .stop("replaced by a new session from the same address");
            }
        }
        maps.by_addr.insert(addr, c.clone());
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
            let mut maps = self.maps();
            maps.by_sid.insert((from, p.session_id), entry.clone());
            maps.by_addr.entry(from).or_insert_with(|| entry.clone());
            maps.by_peer_id.insert(client.peer_id, entry.clone());
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
            maps.by_peer_id.remove(&client.peer_id);
            maps.by_addr.retain(|_, u| !Arc::ptr_eq(u, &entry));
            maps.by_sid.retain(|_, u| !Arc::ptr_eq(u, &entry));
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
