//! How the gateway reads its tun device, and its packet thread.
//!
//! With transport_protocol = "tcp", a runtime task reads the tun device
//! and hands each packet to its session's outbox.
//!
//! With "udp", a packet thread of its own runs one poll loop over the tun
//! device and the datagram socket, as ocserv's workers do: datagrams from
//! clients are opened, judged and written to the tun device there, and
//! packets for clients are read there and sent as datagrams (or handed to
//! the session's outbox). Neither descriptor is registered with the tokio
//! runtime, so a packet wakes exactly this thread (no event dispatch, no
//! task hand-off), and a reply the kernel queued during a datagram's tun
//! write leaves from the same thread before it sleeps again
//! (bench/README.md: idle RTT, 15-30 µs less than with the tun device in
//! the runtime).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use cvpn_proto::VNET_HDR_LEN;
use cvpn_tundev::{PolledTun, TunDevice, TunError};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use tokio::task::JoinSet;
use tracing::debug;

use crate::serve::Gateway;
use crate::session::Reply;
use crate::udp;

/// The gateway's tun device, read in one of the two ways above.
pub enum Tun {
    Runtime(TunDevice),
    Polled(PolledTun),
}

impl Tun {
    pub fn create(
        name: &str,
        address: std::net::Ipv4Addr,
        netmask: std::net::Ipv4Addr,
        mtu: u16,
        polled: bool,
    ) -> Result<Tun, TunError> {
        Ok(if polled {
            Tun::Polled(PolledTun::create(name, address, netmask, mtu)?)
        } else {
            Tun::Runtime(TunDevice::create(name, address, netmask, mtu)?)
        })
    }

    /// Writes one packet (virtio-net header in front) from any thread; the
    /// kernel forwards it before the call returns.
    pub fn write(&self, packet: &[u8]) -> std::io::Result<usize> {
        match self {
            Tun::Runtime(t) => t.send_now(packet),
            Tun::Polled(t) => t.write(packet),
        }
    }
}

/// Starts whatever reads the tun device (and the datagram socket); it
/// stops when `stop` is set or its task is aborted.
pub fn start(gw: &Arc<Gateway>, tasks: &mut JoinSet<Result<()>>, stop: Arc<AtomicBool>) {
    let gw = gw.clone();
    match &gw.tun {
        Tun::Runtime(_) => {
            tasks.spawn(tun_reader(gw));
        }
        Tun::Polled(_) => {
            tasks.spawn_blocking(move || run(gw, stop));
        }
    }
}

/// Reads packets from the tun device and hands each to its session.
async fn tun_reader(gw: Arc<Gateway>) -> Result<()> {
    let Tun::Runtime(tun) = &gw.tun else {
        return Ok(());
    };
    let mut buf = vec![0u8; cvpn_proto::MAX_PACKET_FRAME];
    loop {
        let n = tun.recv(&mut buf).await.context("reading the tun device")?;
        gw.deliver(&buf[..n]);
    }
}

/// Packets read from the tun device per wake-up at most.
const BURST: usize = 64;
/// How long the thread sleeps at most before looking at `stop`.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Packets a session takes from the tun device after its tun writes.
const REPLIES_AT_ONCE: usize = 8;

thread_local! {
    /// take_replies' buffer: one per runtime worker, not one per session.
    static REPLY_BUF: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; cvpn_proto::MAX_PACKET_FRAME]);
}

/// Called by a session right after it wrote its client's packets to the
/// tun device. The kernel forwards a tun write before the write returns,
/// so a nearby host's reply (a ping, an ACK) is often queued already:
/// handing it on from the session's own task skips waking the packet
/// thread and then the session again (without it, idle RTT over the stream
/// was 0.456 against 0.367 ms, bench/README.md). Whatever is left, the
/// packet thread reads. Two packets of one flow read at the same moment by
/// both may reach the client out of order, as they may on any path. With
/// the tun device in the runtime this does nothing: reading there was
/// slower, as the runtime still wakes its reader for the readiness event.
pub fn take_replies(gw: &Gateway) {
    let Tun::Polled(tun) = &gw.tun else {
        return;
    };
    REPLY_BUF.with_borrow_mut(|buf| {
        for _ in 0..REPLIES_AT_ONCE {
            let Ok(n) = tun.read(buf) else {
                return;
            };
            gw.deliver(&buf[..n]);
        }
    });
}

/// The packet thread: runs until `stop` is set or the tun device fails.
///
/// It reads one datagram per wake-up and then the tun device once, and
/// goes back to poll(2) right after the reply is sent: poll is
/// level-triggered, so whatever else is queued is read on the next turn,
/// and no read that finds nothing is done between sending a reply and
/// sleeping (work after a send delays the peer it woke when both share a
/// CPU, bench/README.md).
fn run(gw: Arc<Gateway>, stop: Arc<AtomicBool>) -> Result<()> {
    let Tun::Polled(tun) = &gw.tun else {
        return Ok(());
    };
    let mut tun_buf = vec![0u8; cvpn_proto::MAX_PACKET_FRAME];
    let mut dgram_buf = vec![0u8; 64 * 1024];
    let mut reply: Reply = [0u8; VNET_HDR_LEN + cvpn_gw::icmp::MAX_REPLY];
    let mut pktinfo = udp::pktinfo_space();
    while !stop.load(Ordering::Relaxed) {
        let ready = wait(tun, gw.udp.as_ref())?;
        if ready.datagram && one_datagram(&gw, &mut dgram_buf, &mut pktinfo, &mut reply) {
            drain_tun(&gw, tun, &mut tun_buf, 1)?;
        }
        if ready.tun {
            drain_tun(&gw, tun, &mut tun_buf, BURST)?;
        }
    }
    Ok(())
}

/// Opens and forwards one datagram queued on the socket; false if there
/// was none.
fn one_datagram(gw: &Gateway, buf: &mut [u8], pktinfo: &mut [u8], reply: &mut Reply) -> bool {
    let Some(sock) = &gw.udp else {
        return false;
    };
    match udp::recv_with_local(sock, buf, pktinfo) {
        Ok((len, from, local)) => {
            udp::receive(gw, &mut buf[..len], from, local, reply);
            true
        }
        Err(e) => {
            // WouldBlock, or an ICMP error for an earlier send (reading it
            // cleared it).
            if e.kind() != std::io::ErrorKind::WouldBlock {
                debug!(error = %e, "UDP receive");
            }
            false
        }
    }
}

/// Hands up to `most` packets queued on the tun device to their sessions.
fn drain_tun(gw: &Gateway, tun: &PolledTun, buf: &mut [u8], most: usize) -> Result<()> {
    let mut n = 0;
    while n < most {
        match tun.read(buf) {
            Ok(len) => {
                gw.deliver(&buf[..len]);
                n += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the tun device"),
        }
    }
    Ok(())
}

struct Ready {
    tun: bool,
    datagram: bool,
}

/// Sleeps until the tun device or the socket has something to read (or
/// STOP_CHECK passes); says which.
fn wait(tun: &PolledTun, udp: Option<&std::net::UdpSocket>) -> Result<Ready> {
    let mut fds = Vec::with_capacity(2);
    fds.push(PollFd::new(tun, PollFlags::IN));
    if let Some(sock) = udp {
        fds.push(PollFd::new(sock, PollFlags::IN));
    }
    let timeout = Timespec::try_from(STOP_CHECK).unwrap_or_default();
    match poll(&mut fds, Some(&timeout)) {
        Ok(_) => {}
        Err(rustix::io::Errno::INTR) => {
            return Ok(Ready {
                tun: false,
                datagram: false,
            });
        }
        Err(e) => return Err(std::io::Error::from(e)).context("poll on the tun device"),
    }
    // Errors and hang-ups count as readable: the read says what they are.
    let ready = |fd: &PollFd<'_>| !fd.revents().is_empty();
    Ok(Ready {
        tun: ready(&fds[0]),
        datagram: fds.get(1).is_some_and(ready),
    })
}
