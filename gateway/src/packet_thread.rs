//! The packet thread (transport_protocol = "udp"): one poll loop over the
//! tun device and the UDP socket, as ocserv's workers do. Datagrams from
//! clients are opened, judged and written to the tun device here, and
//! packets for clients are read here and sent as datagrams (or handed to
//! the session's outbox). A reply the kernel queued during a datagram's
//! tun write leaves from this thread before it sleeps again
//! (bench/README.md: idle RTT, 15-30 µs less than with the tun device in
//! the runtime).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use cvpn_tundev::PolledTun;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use tracing::debug;

use crate::endpoint::Endpoint;
use crate::endpoint::forward::{Reply, reply_buffer};
use crate::inside::Tun;
use crate::outside::udp::{self, Udp};

/// Packets read from the tun device per wake-up at most.
const BURST: usize = 64;
/// How long the thread sleeps at most before looking at `stop`.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Runs until `stop` is set or the tun device fails.
///
/// It reads one datagram per wake-up and then the tun device once, and
/// goes back to poll(2) right after the reply is sent: poll is
/// level-triggered, so whatever else is queued is read on the next turn,
/// and no read that finds nothing is done between sending a reply and
/// sleeping (work after a send delays the peer it woke when both share a
/// CPU, bench/README.md).
pub fn run(ep: Arc<Endpoint>, tun: Arc<Tun>, udp: Arc<Udp>, stop: Arc<AtomicBool>) -> Result<()> {
    let Tun::Polled(tun) = &*tun else {
        return Ok(());
    };
    let mut tun_buf = vec![0u8; cvpn_proto::MAX_PACKET_FRAME];
    let mut dgram_buf = vec![0u8; 64 * 1024];
    let mut reply = reply_buffer();
    let mut pktinfo = udp::pktinfo_space();
    while !stop.load(Ordering::Relaxed) {
        let ready = wait(tun, &udp.socket)?;
        if ready.datagram && one_datagram(&ep, &udp, &mut dgram_buf, &mut pktinfo, &mut reply) {
            drain_tun(&ep, tun, &mut tun_buf, 1)?;
        }
        if ready.tun {
            drain_tun(&ep, tun, &mut tun_buf, BURST)?;
        }
    }
    Ok(())
}

/// Opens and forwards one datagram queued on the socket; false if there
/// was none.
fn one_datagram(
    ep: &Endpoint,
    udp: &Udp,
    buf: &mut [u8],
    pktinfo: &mut [u8],
    reply: &mut Reply,
) -> bool {
    match udp::recv_with_local(&udp.socket, buf, pktinfo) {
        Ok((len, from, local)) => {
            udp.receive(ep, &mut buf[..len], from, local, reply);
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
fn drain_tun(ep: &Endpoint, tun: &PolledTun, buf: &mut [u8], most: usize) -> Result<()> {
    let mut n = 0;
    while n < most {
        match tun.read(buf) {
            Ok(len) => {
                ep.deliver(&buf[..len]);
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
fn wait(tun: &PolledTun, sock: &std::net::UdpSocket) -> Result<Ready> {
    let mut fds = [
        PollFd::new(tun, PollFlags::IN),
        PollFd::new(sock, PollFlags::IN),
    ];
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
        datagram: ready(&fds[1]),
    })
}
