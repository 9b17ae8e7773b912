//! The UDP socket (transport_protocol = "udp") and cvpn/1's datagram
//! channel on it: datagrams from clients are opened and judged by the same
//! per-packet policy as the TLS stream's packets; packets for a client
//! whose datagrams keep arriving leave as datagrams when they fit one.
//! Both run on the packet thread (packet_thread.rs).

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};

use cvpn_proto::datagram::{self, KIND_PROBE, MAX_DATAGRAM};
use tracing::debug;

use crate::endpoint::Endpoint;
use crate::endpoint::forward::Reply;
use crate::endpoint::session::Session;
use crate::endpoint::sharded::ShardedMap;
use crate::protocol::cvpn::datagram::DatagramPath;

/// Asks the kernel to say, with each datagram, which of the host's
/// addresses it was sent to (IPv4 sockets; IPv6 ones answer by routing).
pub fn want_local_address(sock: &UdpSocket) -> std::io::Result<()> {
    if sock.local_addr()?.is_ipv4() {
        setsockopt(sock, sockopt::Ipv4PacketInfo, &true)?;
    }
    Ok(())
}

/// `n` non-blocking sockets bound to `addr` as one SO_REUSEPORT group
/// (the kernel picks a socket per datagram by a hash of its addresses
/// and ports), each reporting the gateway address datagrams were sent
/// to. The group is complete before this returns, so no datagram is
/// steered by a group that later grows.
pub fn bind_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    (0..n.max(1))
        .map(|_| {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            let s = UdpSocket::from(s);
            want_local_address(&s)?;
            Ok(s)
        })
        .collect()
}

/// Room for the ancillary data `recv_with_local` reads: allocated once by
/// the caller, not per datagram.
pub fn pktinfo_space() -> Vec<u8> {
    nix::cmsg_space!(nix::libc::in_pktinfo)
}

/// Receives one datagram: its length, its sender, and the gateway address
/// it was sent to (when the socket reports it). `space` comes from
/// `pktinfo_space`.
pub fn recv_with_local(
    sock: &UdpSocket,
    buf: &mut [u8],
    space: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<Ipv4Addr>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(space),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| std::io::Error::other("datagram without a sender"))?;
    let mut local = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
            local = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
        }
    }
    Ok((msg.bytes, from, local))
}

/// Sends `buf` to `to` from the gateway address `local` (the one the
/// client sent to), so a gateway listening on 0.0.0.0 answers from it.
pub fn send_from(
    sock: &UdpSocket,
    buf: &[u8],
    to: SocketAddr,
    local: Option<Ipv4Addr>,
) -> std::io::Result<()> {
    let (Some(local), SocketAddr::V4(v4)) = (local, to) else {
        return sock.send_to(buf, to).map(|_| ());
    };
    let info = nix::libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: nix::libc::in_addr {
            s_addr: u32::from(local).to_be(),
        },
        ipi_addr: nix::libc::in_addr { s_addr: 0 },
    };
    let dest = SockaddrStorage::from(v4);
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(buf)],
        &[ControlMessage::Ipv4PacketInfo(&info)],
        MsgFlags::MSG_DONTWAIT,
        Some(&dest),
    )?;
    Ok(())
}

/// A datagram channel and the session it belongs to.
type Channel = (Arc<DatagramPath>, Weak<Session>);

/// Sends `buf` to `to` (from the gateway address `local`) as datagrams of
/// `segment` bytes each (the last may be shorter), cut by the kernel: UDP
/// segmentation offload, one system call for up to 64 datagrams.
pub fn send_segmented(
    sock: &UdpSocket,
    buf: &[u8],
    segment: u16,
    to: SocketAddr,
    local: Option<Ipv4Addr>,
) -> std::io::Result<()> {
    let info = local.map(|l| nix::libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: nix::libc::in_addr {
            s_addr: u32::from(l).to_be(),
        },
        ipi_addr: nix::libc::in_addr { s_addr: 0 },
    });
    let dest = SockaddrStorage::from(to);
    let iov = [IoSlice::new(buf)];
    let gso = ControlMessage::UdpGsoSegments(&segment);
    let flags = MsgFlags::MSG_DONTWAIT;
    match (&info, to) {
        (Some(info), SocketAddr::V4(_)) => {
            let cmsgs = [gso, ControlMessage::Ipv4PacketInfo(info)];
            sendmsg(sock.as_raw_fd(), &iov, &cmsgs, flags, Some(&dest))?
        }
        _ => sendmsg(sock.as_raw_fd(), &iov, &[gso], flags, Some(&dest))?,
    };
    Ok(())
}

/// cvpn/1 sessions with a datagram channel, by its session id: looked up
/// for every datagram by every packet thread, so in shards.
#[derive(Default)]
pub struct Datagrams {
    by_id: ShardedMap<u64, Channel>,
}

impl Datagrams {
    /// Whether `id` names a channel already.
    pub fn contains(&self, id: u64) -> bool {
        self.by_id.get(&id).is_some()
    }

    /// Registers `session`'s channel.
    pub fn insert(&self, path: Arc<DatagramPath>, session: &Arc<Session>) {
        self.by_id
            .insert(path.session, (path, Arc::downgrade(session)));
    }

    /// Forgets the channel `id`.
    pub fn remove(&self, id: u64) {
        self.by_id.remove(&id);
    }

    fn get(&self, id: u64) -> Option<(Arc<DatagramPath>, Arc<Session>)> {
        let (path, s) = self.by_id.get(&id)?;
        Some((path, s.upgrade()?))
    }
}

/// The UDP side of the endpoint: its socket and who is on it.
pub struct Udp {
    /// Non-blocking, read by the packet thread.
    pub socket: Arc<UdpSocket>,
    /// cvpn/1 datagram channels.
    pub cvpn: Datagrams,
    /// OpenVPN clients over UDP.
    pub openvpn: Arc<super::openvpn::udp::UdpServer>,
}

/// cvpn/1 datagrams start with their kind (1 or 2); every OpenVPN packet
/// with an opcode of at least 1, so a first byte of 8 or more.
fn is_openvpn(dgram: &[u8]) -> bool {
    dgram.first().is_some_and(|&b| b >= 8)
}

impl Udp {
    /// One datagram from `from`, sent to the gateway's `local` address.
    /// Nothing a client sends is answered unless it is authentic, so the
    /// socket cannot be used to reflect traffic at someone else.
    pub fn receive(
        &self,
        ep: &Endpoint,
        dgram: &mut [u8],
        from: SocketAddr,
        local: Option<Ipv4Addr>,
        reply: &mut Reply,
    ) {
        if is_openvpn(dgram) {
            return self.openvpn.receive(dgram, from, local, reply);
        }
        let Some((path, s)) = datagram::session_of(dgram).and_then(|id| self.cvpn.get(id)) else {
            ep.drops.no_session.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (kind, payload) = match path.open(dgram, from, local, Instant::now()) {
            Ok(opened) => (opened.kind, opened.payload),
            Err(e) => {
                debug!(connection_id = %s.connection_id, error = %e, "datagram dropped");
                ep.drops.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if kind == KIND_PROBE {
            let mut out = [0u8; datagram::OVERHEAD];
            if let Ok(len) = path.seal(KIND_PROBE, &[], &mut out) {
                let _ = send_from(&self.socket, &out[..len], from, local);
            }
            return;
        }
        let policy = ep.policy.load();
        ep.forward(&s, &policy, payload, reply);
    }
}

/// Sends one packet for a client (virtio-net header and IP packet) on
/// its datagram channel; false if it must take the TLS stream (too big,
/// an offload train, no live datagram path, or the socket is full).
pub fn send_datagram(sock: &UdpSocket, path: &DatagramPath, packet: &[u8]) -> bool {
    if !datagram::fits(packet) {
        return false;
    }
    let Some(peer) = path.live_peer(Instant::now()) else {
        return false;
    };
    let mut out = [0u8; MAX_DATAGRAM];
    match path.seal(datagram::KIND_PACKET, packet, &mut out) {
        // The socket is non-blocking: a full one refuses at once.
        Ok(len) => send_from(sock, &out[..len], peer.addr, peer.local).is_ok(),
        Err(_) => false,
    }
}
