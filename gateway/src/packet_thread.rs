//! The packet threads (transport_protocol = "udp"): as many as
//! `data_threads` says (0: one per core), each a poll loop over a queue
//! of its own of the multi-queue tun device (the kernel hands a flow's
//! replies to the queue that wrote the flow) and a UDP socket of its own
//! on the listen address (SO_REUSEPORT: the kernel spreads clients over
//! the sockets by their address hash, so one client's datagrams always
//! reach the same thread), as ocserv's workers and wireguard-go's
//! per-core routines do. The endpoint core (sessions, policy, counters) is
//! shared; nothing on the per-packet path is a lock all threads take.
//!
//! Datagrams from clients are taken in batches (recvmmsg), opened and
//! judged one by one, and what goes to the target networks is written to
//! the tun queue at the end of the batch, consecutive TCP segments of one
//! flow coalesced into one offload frame (inside/coalesce.rs). Packets
//! for clients are read here and sent as datagrams (or handed to the
//! session's outbox). A reply the kernel queued during the batch's tun
//! writes leaves from this thread before it sleeps again
//! (bench/README.md: idle RTT, 15-30 µs less than with the tun device in
//! the runtime).

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use cvpn_tundev::PolledTun;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use tracing::debug;

use crate::endpoint::Endpoint;
use crate::endpoint::forward::{Reply, reply_buffer};
use crate::endpoint::threads::ThreadCounters;
use crate::inside::{self, Tun};
use crate::outside::batch::Batch;
use crate::outside::udp::Udp;

/// Packets read from the tun device per wake-up at most.
const BURST: usize = 64;
/// How long the thread sleeps at most before looking at `stop`.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// What one packet thread (with transport_protocol = "tcp": one runtime
/// task, inside::queue_reader) reads: its tun queue (index `index` of the
/// device's queues) and its socket.
pub struct Lane {
    /// The thread's number, from 0.
    pub index: usize,
    /// Its UDP socket, non-blocking, in the listen address's group (with
    /// transport_protocol = "udp").
    pub socket: Option<UdpSocket>,
}

/// Runs until `stop` is set or the tun device fails.
///
/// Each turn takes whatever datagrams are queued and then the tun device
/// once, and goes back to poll(2) right after the replies are sent: poll
/// is level-triggered, so whatever else is queued is read on the next
/// turn, and no read that finds nothing is done between sending a reply
/// and sleeping (work after a send delays the peer it woke when both
/// share a CPU, bench/README.md).
pub fn run(
    ep: Arc<Endpoint>,
    tun: Arc<Tun>,
    udp: Arc<Udp>,
    lane: Lane,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let Some(queue) = tun.queues.get(lane.index) else {
        return Ok(());
    };
    let Some(counters) = ep.data_threads.get().map(|t| t.row(lane.index)) else {
        return Ok(());
    };
    inside::use_queue(lane.index);
    let mut tun_buf = vec![0u8; cvpn_proto::MAX_PACKET_FRAME];
    let mut batch = Batch::default();
    let mut reply = reply_buffer();
    while !stop.load(Ordering::Relaxed) {
        let ready = wait(queue, lane.socket.as_ref())?;
        if let (true, Some(socket)) = (ready.datagram, &lane.socket)
            && datagrams(&ep, &udp, (socket, queue), &mut batch, &mut reply, counters)
        {
            drain_tun(&ep, queue, &mut tun_buf, 1, counters)?;
        }
        if ready.tun {
            drain_tun(&ep, queue, &mut tun_buf, BURST, counters)?;
        }
    }
    Ok(())
}

/// Opens and forwards the datagrams queued on the socket, then writes
/// what they carried for the target networks; false if there were none.
fn datagrams(
    ep: &Endpoint,
    udp: &Udp,
    (socket, queue): (&UdpSocket, &PolledTun),
    batch: &mut Batch,
    reply: &mut Reply,
    counters: &ThreadCounters,
) -> bool {
    let n = match batch.receive(socket) {
        Ok(n) => n,
        Err(e) => {
            // An ICMP error for an earlier send (reading it cleared it).
            debug!(error = %e, "UDP receive");
            return false;
        }
    };
    if n == 0 {
        return false;
    }
    inside::begin_batch();
    for i in 0..n {
        let Some((r, dgram)) = batch.datagram(i) else {
            continue;
        };
        if r.truncated {
            ep.drops.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        udp.receive(ep, dgram, r.from, r.local, reply);
    }
    let (writes, merged) = inside::end_batch(queue);
    ThreadCounters::add(&counters.datagrams, n as u64);
    ThreadCounters::add(&counters.batches, 1);
    ThreadCounters::add(&counters.tun_writes, writes);
    ThreadCounters::add(&counters.coalesced, merged);
    true
}

/// Hands up to `most` packets queued on the tun queue to their sessions.
fn drain_tun(
    ep: &Endpoint,
    tun: &PolledTun,
    buf: &mut [u8],
    most: usize,
    counters: &ThreadCounters,
) -> Result<()> {
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
    ThreadCounters::add(&counters.tun_reads, n as u64);
    Ok(())
}

struct Ready {
    tun: bool,
    datagram: bool,
}

/// Sleeps until the tun queue or the socket (if any) has something to
/// read (or STOP_CHECK passes); says which.
fn wait(tun: &PolledTun, sock: Option<&UdpSocket>) -> Result<Ready> {
    let mut both = [
        PollFd::new(tun, PollFlags::IN),
        PollFd::new(tun, PollFlags::IN),
    ];
    if let Some(sock) = sock {
        both[1] = PollFd::new(sock, PollFlags::IN);
    }
    let fds = &mut both[..1 + usize::from(sock.is_some())];
    let timeout = Timespec::try_from(STOP_CHECK).unwrap_or_default();
    match poll(fds, Some(&timeout)) {
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
