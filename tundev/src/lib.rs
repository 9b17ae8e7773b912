//! The tun device of both ends, opened with IFF_VNET_HDR and the kernel's
//! TCP segmentation and checksum offloads enabled: reads and writes carry a
//! virtio-net header and up to 64 KB per packet, so a TCP stream crosses
//! the tunnel in large segments instead of MTU-sized packets.
//!
//! Two shapes: [`TunDevice`], registered with the tokio runtime (the
//! client's stream path), and [`PolledTun`], a non-blocking device the
//! caller polls on a thread of its own (the gateway's packet thread), so
//! that no runtime is woken for packets it does not read.
//!
//! The `tun` crate creates the device; it has no call for TUNSETOFFLOAD, so
//! this crate makes that one ioctl itself, and borrows the device's
//! descriptor for poll(2) (the only unsafe code here).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("cannot create tun device {name}: {source}")]
    Create { name: String, source: tun::Error },
    #[error("tun device {name}: {what}: {source}")]
    Setup {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Offloads asked for: checksums, TCP segmentation for IPv4 and IPv6.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

fn configuration(name: &str, address: Ipv4Addr, netmask: Ipv4Addr, mtu: u16) -> tun::Configuration {
    let mut cfg = tun::Configuration::default();
    cfg.tun_name(name)
        .address(address)
        .netmask(netmask)
        .mtu(mtu)
        .up();
    cfg.platform_config(|p| {
        p.vnet_hdr(true);
    });
    cfg
}

fn setup_error(name: &str, what: &'static str) -> impl FnOnce(std::io::Error) -> TunError {
    let name = name.to_string();
    move |source| TunError::Setup { name, what, source }
}

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
        let cfg = configuration(name, address, netmask, mtu);
        let dev = tun::create_as_async(&cfg).map_err(|source| TunError::Create {
            name: name.to_string(),
            source,
        })?;
        set_offload(dev.as_raw_fd(), OFFLOADS)
            .map_err(setup_error(name, "cannot enable offloads"))?;
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

    /// Writes one packet now, from any thread: a tun device's writes do not
    /// wait for room, and the kernel forwards the packet before the call
    /// returns.
    pub fn send_now(&self, buf: &[u8]) -> std::io::Result<usize> {
        tun::Device::send(&self.dev, buf)
    }

    /// A read that completes only if a packet is already queued.
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

/// A tun device in non-blocking mode for a poll loop of the caller's own.
pub struct PolledTun {
    dev: tun::Device,
}

impl PolledTun {
    /// Creates `name` with `address`/`netmask`, up, with offloads.
    pub fn create(
        name: &str,
        address: Ipv4Addr,
        netmask: Ipv4Addr,
        mtu: u16,
    ) -> Result<PolledTun, TunError> {
        let cfg = configuration(name, address, netmask, mtu);
        let dev = tun::create(&cfg).map_err(|source| TunError::Create {
            name: name.to_string(),
            source,
        })?;
        set_offload(dev.as_raw_fd(), OFFLOADS)
            .map_err(setup_error(name, "cannot enable offloads"))?;
        dev.set_nonblock()
            .map_err(setup_error(name, "cannot make it non-blocking"))?;
        Ok(PolledTun { dev })
    }

    /// Reads one queued packet with its virtio-net header in front;
    /// WouldBlock if none is queued.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.dev.recv(buf)
    }

    /// Writes one packet; `buf` starts with its virtio-net header. The
    /// kernel forwards it before the call returns: a tun device's writes do
    /// not wait for room.
    pub fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.dev.send(buf)
    }
}

impl AsFd for PolledTun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        borrow(self.dev.as_raw_fd())
    }
}

#[allow(unsafe_code)]
fn borrow<'a>(fd: std::os::fd::RawFd) -> BorrowedFd<'a> {
    // SAFETY: only called with the descriptor of a device this crate's
    // types own, and the borrow is used (poll) while that owner is
    // borrowed: the descriptor stays open for the borrow's lifetime.
    unsafe { BorrowedFd::borrow_raw(fd) }
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
