//! The inside of the endpoint: its tun device toward the target networks,
//! read in one of two ways.
//!
//! With transport_protocol = "tcp", a runtime task reads the device and
//! hands each packet to its session ([`tun_reader`]).
//!
//! With "udp", the packet thread (packet_thread.rs) polls the device
//! beside the UDP socket. Neither descriptor is registered with the tokio
//! runtime, so a packet wakes exactly that thread (no event dispatch, no
//! task hand-off).

pub mod segment;

use std::sync::Arc;

use anyhow::{Context, Result};
use cvpn_tundev::{PolledTun, TunDevice, TunError};

use crate::endpoint::{Endpoint, Inside};

/// The gateway's tun device, read in one of the two ways above.
pub enum Tun {
    /// Registered with the tokio runtime, read by [`tun_reader`].
    Runtime(TunDevice),
    /// Non-blocking, polled by the packet thread.
    Polled(PolledTun),
}

/// Packets a session takes from the tun device after its tun writes.
const REPLIES_AT_ONCE: usize = 8;

thread_local! {
    /// take_replies' buffer: one per runtime worker, not one per session.
    static REPLY_BUF: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; cvpn_proto::MAX_PACKET_FRAME]);
}

impl Tun {
    /// Creates the device, up, with offloads; `polled` for the packet
    /// thread.
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
}

/// The endpoint's view of the device. Both methods may be called from any
/// thread.
pub struct Device(pub Arc<Tun>);

impl Inside for Device {
    fn write(&self, packet: &[u8]) -> std::io::Result<usize> {
        match &*self.0 {
            Tun::Runtime(t) => t.send_now(packet),
            Tun::Polled(t) => t.write(packet),
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
        let Tun::Polled(tun) = &*self.0 else {
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
