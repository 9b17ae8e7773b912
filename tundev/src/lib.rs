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
//! A [`PolledTun`] may be one of several queues of a multi-queue device
//! ([`PolledTun::create_queues`]): each queue is a descriptor of its own,
//! and the kernel hands a packet to the queue that wrote its flow last
//! (else to one chosen by the flow's hash), so one thread per queue sees
//! both directions of its flows.
//!
//! The `tun` crate creates single-queue devices and configures addresses;
//! it has no call for TUNSETOFFLOAD nor for multi-queue devices, so this
//! crate makes those ioctls itself, and borrows the device's descriptor
//! for poll(2) (the only unsafe code here).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use tun::AbstractDevice;

/// What can go wrong creating a tun device.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The `tun` crate refused or failed.
    #[error("cannot create tun device {name}: {source}")]
    Create {
        /// The device's name.
        name: String,
        /// Why.
        source: tun::Error,
    },
    /// A step after creation failed.
    #[error("tun device {name}: {what}: {source}")]
    Setup {
        /// The device's name.
        name: String,
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Configuring an address, netmask, MTU or the link state failed.
    #[error("tun device {name}: {what}: {source}")]
    Configure {
        /// The device's name.
        name: String,
        /// The step.
        what: &'static str,
        /// Why.
        source: tun::Error,
    },
}

/// Queues of one device at most (the kernel's MAX_TAP_QUEUES is 256).
pub const MAX_QUEUES: usize = 256;

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

/// A tun device read and written through the tokio runtime.
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

    /// Creates `name` as a multi-queue device with `queues` queues (1 to
    /// MAX_QUEUES), addressed, up, with offloads, each queue non-blocking.
    pub fn create_queues(
        name: &str,
        address: Ipv4Addr,
        netmask: Ipv4Addr,
        mtu: u16,
        queues: usize,
    ) -> Result<Vec<PolledTun>, TunError> {
        let setup = |what| setup_error(name, what);
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(setup("the name must have 1 to 15 bytes")(
                std::io::ErrorKind::InvalidInput.into(),
            ));
        }
        if queues == 0 || queues > MAX_QUEUES {
            return Err(setup("queues must be 1 to 256")(
                std::io::ErrorKind::InvalidInput.into(),
            ));
        }
        let mut out = Vec::with_capacity(queues);
        for _ in 0..queues {
            let fd = open_queue(name).map_err(setup("cannot attach a queue"))?;
            let mut cfg = tun::Configuration::default();
            cfg.raw_fd(fd.into_raw_fd())
                .tun_name(name)
                .close_fd_on_drop(true);
            cfg.platform_config(|p| {
                p.vnet_hdr(true);
            });
            let dev = tun::create(&cfg).map_err(|source| TunError::Create {
                name: name.to_string(),
                source,
            })?;
            dev.set_nonblock()
                .map_err(setup("cannot make it non-blocking"))?;
            out.push(PolledTun { dev });
        }
        let first = &mut out[0].dev;
        set_offload(first.as_raw_fd(), OFFLOADS).map_err(setup("cannot enable offloads"))?;
        let configure = |what| {
            let name = name.to_string();
            move |source| TunError::Configure { name, what, source }
        };
        first
            .set_address(IpAddr::V4(address))
            .map_err(configure("cannot set the address"))?;
        first
            .set_netmask(IpAddr::V4(netmask))
            .map_err(configure("cannot set the netmask"))?;
        first
            .set_mtu(mtu)
            .map_err(configure("cannot set the MTU"))?;
        first
            .enabled(true)
            .map_err(configure("cannot bring it up"))?;
        Ok(out)
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

/// A queue registered with the tokio runtime, for a task that reads it.
pub struct RuntimeQueue<'a> {
    tun: &'a PolledTun,
    ready: tokio::io::unix::AsyncFd<BorrowedFd<'a>>,
}

impl PolledTun {
    /// Registers the queue with the current tokio runtime (which must
    /// have I/O enabled).
    pub fn register(&self) -> std::io::Result<RuntimeQueue<'_>> {
        Ok(RuntimeQueue {
            tun: self,
            ready: register(self.as_fd())?,
        })
    }
}

impl RuntimeQueue<'_> {
    /// Waits until a packet is queued, then hands every queued packet
    /// (read into `buf`) to `each`; returns how many there were.
    pub async fn drain(&self, buf: &mut [u8], mut each: impl FnMut(&[u8])) -> std::io::Result<u64> {
        let mut guard = self.ready.readable().await?;
        let mut n = 0;
        loop {
            match self.tun.read(buf) {
                Ok(len) => {
                    each(&buf[..len]);
                    n += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[allow(unsafe_code)]
fn register(fd: BorrowedFd<'_>) -> std::io::Result<tokio::io::unix::AsyncFd<BorrowedFd<'_>>> {
    // SAFETY: the registration lives in the AsyncFd, which holds the
    // borrowed descriptor: the borrow keeps the descriptor open for as
    // long as it is registered, and dropping the AsyncFd deregisters it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

#[allow(unsafe_code)]
fn borrow<'a>(fd: std::os::fd::RawFd) -> BorrowedFd<'a> {
    // SAFETY: only called with the descriptor of a device this crate's
    // types own, and the borrow is used (poll) while that owner is
    // borrowed: the descriptor stays open for the borrow's lifetime.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Opens /dev/net/tun and attaches it to `name` as one more queue (the
/// first creates the device), without packet information, with
/// virtio-net headers.
fn open_queue(name: &str) -> std::io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let fd = OwnedFd::from(file);
    let flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
    set_iff(fd.as_raw_fd(), name, flags as libc::c_short)?;
    Ok(fd)
}

#[allow(unsafe_code)]
fn set_iff(fd: std::os::fd::RawFd, name: &str, flags: libc::c_short) -> std::io::Result<()> {
    // SAFETY: an all-zero ifreq is valid (a C struct of integers and
    // arrays); the name fits (checked by the caller: under IFNAMSIZ bytes,
    // so the zero after it stays); TUNSETIFF reads and writes this ifreq,
    // which lives across the call, on `fd`, an open /dev/net/tun.
    let rc = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = flags;
        libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut libc::ifreq)
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
