//! Batched receive on a packet thread's UDP socket: one recvmmsg(2) takes
//! every datagram queued (up to [`BATCH`]), each with its sender and the
//! gateway address it was sent to.

use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};

use super::udp::pktinfo_space;

/// Datagrams per receive call at most.
pub const BATCH: usize = 32;
/// Room for one datagram: more than any client sends (a 1,500-byte tun
/// MTU with OpenVPN's or cvpn/1's overhead); a longer one is cut and
/// dropped.
const SLOT: usize = 4096;

/// One datagram of a batch.
#[derive(Clone, Copy)]
pub struct Received {
    /// Which buffer holds it.
    slot: usize,
    /// Its length.
    pub len: usize,
    /// Its sender.
    pub from: SocketAddr,
    /// The gateway address it was sent to, when the socket says.
    pub local: Option<Ipv4Addr>,
    /// Longer than a slot: cut, to be dropped.
    pub truncated: bool,
}

/// Buffers and headers for batched receives, allocated once per thread.
pub struct Batch {
    slots: Vec<u8>,
    headers: MultiHeaders<SockaddrStorage>,
    got: Vec<Received>,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            slots: vec![0u8; BATCH * SLOT],
            headers: MultiHeaders::preallocate(BATCH, Some(pktinfo_space())),
            got: Vec::with_capacity(BATCH),
        }
    }
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    a.as_sockaddr_in()
        .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
        .or_else(|| {
            a.as_sockaddr_in6()
                .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
        })
}

impl Batch {
    /// Takes what is queued on `sock` without waiting; how many
    /// datagrams (0: none, or an error the next call reports).
    pub fn receive(&mut self, sock: &UdpSocket) -> std::io::Result<usize> {
        self.got.clear();
        let mut slots = self.slots.chunks_mut(SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
        let results = match recvmmsg(
            sock.as_raw_fd(),
            &mut self.headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(r) => r,
            Err(nix::errno::Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        for (slot, msg) in results.enumerate() {
            let Some(from) = msg.address.as_ref().and_then(socket_addr) else {
                continue;
            };
            let mut local = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                        local = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                    }
                }
            }
            self.got.push(Received {
                slot,
                len: msg.bytes.min(SLOT),
                from,
                local,
                truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
            });
        }
        Ok(self.got.len())
    }

    /// Datagram `i` of the last receive and its bytes.
    pub fn datagram(&mut self, i: usize) -> Option<(Received, &mut [u8])> {
        let r = *self.got.get(i)?;
        let start = r.slot * SLOT;
        let slot = self.slots.get_mut(start..start + r.len)?;
        Some((r, slot))
    }
}
