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

use super::driver::{self, Start, tls_factory};
use super::{Client, Clients, RESET_PACKET_ID, Wire, unix_now};
use crate::endpoint::Endpoint;
use crate::endpoint::forward::Reply;
use crate::outside::udp::{send_from, send_segmented};
use crate::protocol::openvpn::control::Control;
use crate::protocol::openvpn::cookie::CookieKey;
use crate::protocol::openvpn::packet::{
    self, Acks, ControlPacket, HARD_RESET_CLIENT_V2, HARD_RESET_SERVER_V2,
};

/// Control packets waiting for a driver at most; more are dropped (the
/// client sends them again).
const CONTROL_QUEUE: usize = 64;

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
}

/// The OpenVPN side of the UDP socket.
pub struct UdpServer {
    ep: Arc<Endpoint>,
    clients: Arc<Clients>,
    socket: Arc<UdpSocket>,
    cookie: CookieKey,
    runtime: tokio::runtime::Handle,
    by_addr: Mutex<HashMap<SocketAddr, Arc<UdpClient>>>,
    by_peer_id: Mutex<HashMap<u32, Arc<UdpClient>>>,
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
            runtime,
            by_addr: Mutex::new(HashMap::new()),
            by_peer_id: Mutex::new(HashMap::new()),
        })
    }

    fn by_addr(&self, addr: SocketAddr) -> Option<Arc<UdpClient>> {
        let map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&addr).cloned()
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
                packet::DATA_V2 => packet::data_v2_peer_id(dgram).and_then(|id| {
                    let map = self.by_peer_id.lock().unwrap_or_else(|p| p.into_inner());
                    map.get(&id).cloned()
                }),
                _ => self.by_addr(from),
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
        match self.by_addr(from) {
            // Full: dropped, the client sends it again.
            Some(c) => drop(c.control.try_send(dgram.to_vec())),
            None => self.first_contact(dgram, from, local),
        }
    }

    /// An authentic packet came from `now`: replies go there from now on.
    fn float(&self, c: &Arc<UdpClient>, now: Peer) {
        let mut peer = c.wire.peer.lock().unwrap_or_else(|p| p.into_inner());
        if *peer == now {
            return;
        }
        let old = std::mem::replace(&mut *peer, now);
        drop(peer);
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&old.addr);
        map.insert(now.addr, c.clone());
    }

    /// A control packet from an address without a client: a reset gets
    /// the cookie (within the source's handshake rate), the packet that
    /// echoes it creates the client. Anything else gets nothing.
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
                .ep
                .source_rate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .allow(from.ip(), Instant::now());
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
        let Ok(permit) = self.ep.handshakes.clone().try_acquire_owned() else {
            self.ep
                .failed_without_certificate(from, "too many handshakes in progress");
            return;
        };
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
            peer: Mutex::new(Peer { addr: from, local }),
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
        });
        self.by_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(from, entry.clone());
        self.by_peer_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client.peer_id, entry.clone());
        let start = Start {
            device: from,
            started: time::OffsetDateTime::now_utc(),
            udp: true,
            permit: Some(permit),
            wrapping: self.clients.wrapping(),
        };
        let me = self.clone();
        self.runtime.spawn(async move {
            driver::drive(me.ep.clone(), client.clone(), control, rx, start).await;
            me.clients.remove(client.peer_id);
            let mut map = me.by_peer_id.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&client.peer_id);
            drop(map);
            let mut map = me.by_addr.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, u| !Arc::ptr_eq(u, &entry));
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
