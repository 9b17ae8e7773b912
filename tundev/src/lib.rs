//! The tun device of both ends, opened with IFF_VNET_HDR and the kernel's
//! TCP segmentation and checksum offloads enabled: reads and writes carry a
//! virtio-net header and up to 64 KB per packet, so a TCP stream crosses
//! the tunnel in large segments instead of MTU-sized packets.
//!
//! The `tun` crate creates the device; it has no call for TUNSETOFFLOAD, so
//! this crate makes that one ioctl itself (the only unsafe code here).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("cannot create tun device {name}: {source}")]
    Create { name: String, source: tun::Error },
    #[error("tun device {name}: cannot enable offloads: {source}")]
    Offload {
        name: String,
        source: std::io::Error,
    },
}

/// Offloads asked for: checksums, TCP segmentation for IPv4 and IPv6.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

pub struct TunDevice {
    dev: tun::AsyncDevice,
}

impl TunDevice {
    /// Creates `name` with `address`/`netmask`, up, with offloads.
    pub fn create(
        name: &str,
        address: Ipv4Addr,
        netmask: Ipv4Addr,
        mtu: u16,
    ) -> Result<TunDevice, TunError> {
        let mut cfg = tun::Configuration::default();
        cfg.tun_name(name)
            .address(address)
            .netmask(netmask)
            .mtu(mtu)
            .up();
        cfg.platform_config(|p| {
            p.vnet_hdr(true);
        });
        let dev = tun::create_as_async(&cfg).map_err(|source| TunError::Create {
            name: name.to_string(),
            source,
        })?;
        set_offload(dev.as_raw_fd(), OFFLOADS).map_err(|source| TunError::Offload {
            name: name.to_string(),
            source,
        })?;
        Ok(TunDevice { dev })
    }

    /// Reads one packet with its virtio-net header in front.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.dev.recv(buf).await
    }

    /// Writes one packet; `buf` starts with its virtio-net header.
    pub async fn send(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.dev.send(buf).await
    }

    /// A read that completes only if a packet is already queued.
    /// Reads one packet now, whether or not the runtime has seen the device
    /// readable yet (WouldBlock if none is queued): a reply the kernel
    /// queued during the caller's own tun write is there before the
    /// runtime's next poll would report it.
    pub fn recv_now(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        tun::Device::recv(&self.dev, buf)
    }

    pub fn try_recv(&self, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
        use std::future::Future;
        use std::pin::pin;
        use std::task::{Context, Poll, Waker};
        let fut = pin!(self.dev.recv(buf));
        match fut.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }
}

#[allow(unsafe_code)]
fn set_offload(fd: std::os::fd::RawFd, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long
    // of TUN_F_* flags), not a pointer, and `fd` is the open tun device
    // owned by the caller for the duration of the call.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
