//! The inside of the endpoint: its tun device toward the target networks,
//! a multi-queue device with one queue per lane (`data_threads`).
//!
//! With transport_protocol = "udp", each queue is polled by its packet
//! thread (packet_thread.rs) beside the thread's UDP socket; neither is
//! registered with the tokio runtime, so a packet wakes exactly its
//! thread (no event dispatch, no task hand-off). With "tcp", where every
//! packet for a client goes on to a session task anyway, each queue is
//! read by a runtime task of its own ([`queue_reader`]): waking the
//! session from there is cheaper than from a thread outside the runtime
//! (bench/README.md: 10% less CPU per Gbit).
//!
//! The kernel hands a flow's packets for clients to the queue that wrote
//! the flow last. A packet thread writes to its own queue, so both
//! directions of its clients' flows stay on it. Other threads (the
//! runtime's, for sessions over the TLS stream) write to the session's
//! queue ([`Inside::steer`]): the one of the packet thread its datagrams
//! reach, else one picked by its address. So each session's replies are
//! read by one packet thread, and sessions spread over all of them.
//!
//! While a packet thread handles a batch of datagrams, what the policy
//! sends to the device is gathered and coalesced (coalesce.rs), and
//! written when the batch is done ([`end_batch`]).

pub mod coalesce;
pub mod segment;

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use cvpn_tundev::{PolledTun, TunError};

use crate::endpoint::threads::ThreadCounters;
use crate::endpoint::{Endpoint, Inside};

/// The gateway's tun device: its queues, one per packet thread.
pub struct Tun {
    /// Non-blocking; never empty.
    pub queues: Vec<PolledTun>,
}

/// Reads tun queue `index` from the runtime and hands each packet to its
/// session, until the device fails (transport_protocol = "tcp").
pub async fn queue_reader(ep: Arc<Endpoint>, tun: Arc<Tun>, index: usize) -> anyhow::Result<()> {
    let Some(counters) = ep.data_threads.get().map(|t| t.row(index)) else {
        return Ok(());
    };
    let queue = tun.queues.get(index).context("no such tun queue")?;
    let queue = queue.register().context("registering a tun queue")?;
    let mut buf = vec![0u8; cvpn_proto::MAX_PACKET_FRAME];
    loop {
        let n = queue
            .drain(&mut buf, |p| ep.deliver(p))
            .await
            .context("reading the tun device")?;
        ThreadCounters::add(&counters.tun_reads, n);
    }
}

/// Packets a session takes from the tun device after its tun writes.
const REPLIES_AT_ONCE: usize = 8;

thread_local! {
    /// take_replies' buffer: one per runtime worker, not one per session.
    static REPLY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; cvpn_proto::MAX_PACKET_FRAME]);
    /// The queue this thread reads and writes.
    static QUEUE: Cell<usize> = const { Cell::new(0) };
    /// Set on a packet thread: its queue is its own for good.
    static PINNED: Cell<bool> = const { Cell::new(false) };
    /// Set while this thread gathers a batch for the device.
    static BATCHING: Cell<bool> = const { Cell::new(false) };
    static BATCH: RefCell<coalesce::Coalescer> = RefCell::new(coalesce::Coalescer::default());
}

/// Makes the calling thread (a packet thread) read and write queue `i`
/// from now on.
pub fn use_queue(i: usize) {
    QUEUE.set(i);
    PINNED.set(true);
}

/// From now until [`end_batch`], packets the calling thread sends to the
/// device are gathered instead of written.
pub fn begin_batch() {
    BATCHING.set(true);
}

/// Writes what was gathered since [`begin_batch`], coalesced, to `tun`
/// (the thread's queue); returns (writes, packets merged into another's
/// write).
pub fn end_batch(tun: &PolledTun) -> (u64, u64) {
    BATCHING.set(false);
    BATCH.with_borrow_mut(|b| {
        let mut writes = 0;
        let merged = b.flush(|frame| {
            writes += 1;
            if let Err(e) = tun.write(frame) {
                tracing::debug!(error = %e, "tun write failed");
            }
        });
        (writes, merged)
    })
}

impl Tun {
    /// Creates the device with `queues` queues (at least one), up, with
    /// offloads.
    pub fn create(
        name: &str,
        address: std::net::Ipv4Addr,
        netmask: std::net::Ipv4Addr,
        mtu: u16,
        queues: usize,
    ) -> Result<Tun, TunError> {
        let queues = PolledTun::create_queues(name, address, netmask, mtu, queues.max(1))?;
        Ok(Tun { queues })
    }

    /// The calling thread's queue.
    fn own_queue(&self) -> &PolledTun {
        let i = QUEUE.get();
        self.queues.get(i).unwrap_or(&self.queues[0])
    }
}

/// The endpoint's view of the device. Its methods may be called from any
/// thread.
pub struct Device(pub Arc<Tun>);

impl Inside for Device {
    fn write(&self, packet: &[u8]) -> std::io::Result<usize> {
        if BATCHING.get() {
            BATCH.with_borrow_mut(|b| b.push(packet));
            return Ok(packet.len());
        }
        self.0.own_queue().write(packet)
    }

    fn steer(&self, lane: &AtomicUsize) {
        if PINNED.get() {
            let own = QUEUE.get();
            if lane.load(Ordering::Relaxed) != own {
                lane.store(own, Ordering::Relaxed);
            }
        } else {
            QUEUE.set(lane.load(Ordering::Relaxed) % self.0.queues.len());
        }
    }

    /// The kernel forwards a tun write before the write returns, so a
    /// nearby host's reply (a ping, an ACK) is often queued already:
    /// handing it on from the session's own task skips waking the packet
    /// thread and then the session again (without it, idle RTT over the
    /// stream was 0.456 against 0.367 ms, bench/README.md). Whatever is
    /// left, the packet thread reads. Two packets of one flow read at the
    /// same moment by both may reach the client out of order, as they may
    /// on any path.
    fn take_replies(&self, deliver: &mut dyn FnMut(&[u8])) {
        let tun = self.0.own_queue();
        REPLY_BUF.with_borrow_mut(|buf| {
            for _ in 0..REPLIES_AT_ONCE {
                let Ok(n) = tun.read(buf) else {
                    return;
                };
                deliver(&buf[..n]);
            }
        });
    }
}
