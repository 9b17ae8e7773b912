//! The datagram channel (transport_protocol = "udp"): datagrams from
//! clients are opened and judged by the same per-packet policy as the TLS
//! stream's packets; packets for a client whose datagrams keep arriving
//! leave as datagrams when they fit one. Both run on the packet thread
//! (datapath.rs).

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};

use cvpn_gw::dataplane::SessionHandle;
use cvpn_proto::datagram::{self, KIND_PROBE, MAX_DATAGRAM};
use tracing::debug;

use crate::serve::Gateway;
use crate::session::{self, Reply};

/// Asks the kernel to say, with each datagram, which of the host's
/// addresses it was sent to (IPv4 sockets; IPv6 ones answer by routing).
pub fn want_local_address(sock: &UdpSocket) -> std::io::Result<()> {
    if sock.local_addr()?.is_ipv4() {
        setsockopt(sock, sockopt::Ipv4PacketInfo, &true)?;
    }
    Ok(())
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

/// One datagram from `from`, sent to the gateway's `local` address.
/// Nothing a client sends is answered unless it is authentic, so the
/// socket cannot be used to reflect traffic at someone else.
pub fn receive(
    gw: &Gateway,
    dgram: &mut [u8],
    from: SocketAddr,
    local: Option<Ipv4Addr>,
    reply: &mut Reply,
) {
    let Some(s) = datagram::session_of(dgram).and_then(|id| gw.registry.by_datagram(id)) else {
        gw.drops.no_session.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(path) = &s.datagram else {
        return;
    };
    let (kind, payload) = match path.open(dgram, from, local, Instant::now()) {
        Ok(opened) => (opened.kind, opened.payload),
        Err(e) => {
            debug!(connection_id = %s.connection_id, error = %e, "datagram dropped");
            gw.drops.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if kind == KIND_PROBE {
        let mut out = [0u8; datagram::OVERHEAD];
        if let (Some(sock), Ok(len)) = (&gw.udp, path.seal(KIND_PROBE, &[], &mut out)) {
            let _ = send_from(sock, &out[..len], from, local);
        }
        return;
    }
    let policy = gw.policy.load();
    session::forward(gw, &s, &policy, payload, reply);
}

impl Gateway {
    /// Hands one packet for a client (virtio-net header and IP packet) to
    /// its session: as a datagram if it can go as one, else on the stream.
    pub fn deliver(&self, packet: &[u8]) {
        cvpn_gw::dataplane::deliver(&self.registry, &self.drops, packet, |s, p| {
            self.send_datagram(s, p)
        });
    }

    /// Sends one packet read from the tun device to its session as a
    /// datagram; false if it must take the TLS stream (too big, an offload
    /// train, no live datagram path, or the socket is full).
    pub fn send_datagram(&self, s: &SessionHandle, packet: &[u8]) -> bool {
        let (Some(sock), Some(path)) = (&self.udp, &s.datagram) else {
            return false;
        };
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
}
