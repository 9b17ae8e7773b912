//! The inside of the endpoint: its tun device toward the target networks,
//! read in one of two ways.
//!
//! With transport_protocol = "tcp", a runtime task reads the device and
//! hands each packet to its session ([`tun_reader`]).
//!
//! With "udp", the device has one queue per packet thread
//! (packet_thread.rs), each polled beside the thread's UDP socket.
//! Neither descriptor is registered with the tokio runtime, so a packet
//! wakes exactly that thread (no event dispatch, no task hand-off). A
//! thread writes to its own queue, and the kernel hands the replies of a
//! flow to the queue that wrote it last, so both directions of a client's
//! flows stay on one thread. Other threads (the runtime's) use queue 0.
//!
//! While a packet thread handles a batch of datagrams, what the policy
//! sends to the device is gathered and coalesced (coalesce.rs), and
//! written when the batch is done ([`end_batch`]).

pub mod coalesce;
pub mod segment;

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use anyhow::{Context, Result};
use cvpn_tundev::{PolledTun, TunDevice, TunError};

use crate::endpoint::{Endpoint, Inside};

/// The gateway's tun device, read in one of the two ways above.
pub enum Tun {
    /// Registered with the tokio runtime, read by [`tun_reader`].
    Runtime(TunDevice),
    /// Non-blocking queues, one per packet thread.
    Polled(Vec<PolledTun>),
}

/// Packets a session takes from the tun device after its tun writes.
const REPLIES_AT_ONCE: usize = 8;

thread_local! {
    /// take_replies' buffer: one per runtime worker, not one per session.
    static REPLY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; cvpn_proto::MAX_PACKET_FRAME]);
    /// The queue this thread reads and writes.
    static QUEUE: Cell<usize> = const { Cell::new(0) };
    /// Set while this thread gathers a batch for the device.
    static BATCHING: Cell<bool> = const { Cell::new(false) };
    static BATCH: RefCell<coalesce::Coalescer> = RefCell::new(coalesce::Coalescer::default());
}

/// Makes the calling thread read and write queue `i`.
pub fn use_queue(i: usize) {
    QUEUE.set(i);
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
    /// Creates the device, up, with offloads: with `queues`, that many
    /// for packet threads, else one for the runtime.
    pub fn create(
        name: &str,
        address: std::net::Ipv4Addr,
        netmask: std::net::Ipv4Addr,
        mtu: u16,
        queues: Option<usize>,
    ) -> Result<Tun, TunError> {
        Ok(match queues {
            Some(n) => Tun::Polled(PolledTun::create_queues(name, address, netmask, mtu, n)?),
            None => Tun::Runtime(TunDevice::create(name, address, netmask, mtu)?),
        })
    }
}

/// The calling thread's queue of `queues`.
fn own_queue(queues: &[PolledTun]) -> Option<&PolledTun> {
    queues.get(QUEUE.get()).or(queues.first())
}

/// The endpoint's view of the device. Both methods may be called from any
/// thread.
pub struct Device(pub Arc<Tun>);

impl Inside for Device {
    fn write(&self, packet: &[u8]) -> std::io::Result<usize> {
        match &*self.0 {
            Tun::Runtime(t) => t.send_now(packet),
            Tun::Polled(_) if BATCHING.get() => {
                BATCH.with_borrow_mut(|b| b.push(packet));
                Ok(packet.len())
            }
            Tun::Polled(queues) => match own_queue(queues) {
                Some(t) => t.write(packet),
                None => Err(std::io::ErrorKind::NotConnected.into()),
            },
        }
    }

    /// The kernel forwards a tun write before the write returns, so a
    /// nearby host's reply (a ping, an ACK) is often queued already:
    /// handing it on from the session's own task skips waking the packet
    /// thread and then the session again (without it, idle RTT over the
    /// stream was 0.456 against 0.367 ms, bench/README.md). Whatever is
    /// left, the packet thread reads. Two packets of one flow read at the
    /// same moment by both may reach the client out of order, as they may
    /// on any path. With the device in the runtime this does nothing:
    /// reading there was slower, as the runtime still wakes its reader for
    /// the readiness event.
    fn take_replies(&self, deliver: &mut dyn FnMut(&[u8])) {
        let Some(tun) = (match &*self.0 {
            Tun::Polled(queues) => own_queue(queues),
            Tun::Runtime(_) => None,
        }) else {
            return;
        };
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

/// Reads packets from a runtime tun device and hands each to its session,
/// until the device fails.
pub async fn tun_reader(ep: Arc<Endpoint>, tun: Arc<Tun>) -> Result<()> {
    let Tun::Runtime(tun) = &*tun else {
        return Ok(());
    };
    let mut buf = vec![0u8; cvpn_proto::MAX_PACKET_FRAME];
    loop {
        let n = tun.recv(&mut buf).await.context("reading the tun device")?;
        ep.deliver(&buf[..n]);
    }
}
