//! What forwarding needs on the gateway host, added at start and removed at
//! exit: IPv4 forwarding, the nftables table. The tun device and the
//! client-CIDR route (the tun's connected route) vanish with the process.
//! One gateway runs per network namespace: an exclusive lock held for the
//! process's lifetime tells a crash's leftovers from a live instance's.

pub mod aliases;
pub mod conntrack;
pub mod nft;
pub mod sites;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;

use crate::config::TargetNetwork;

/// The sysctl forwarding needs.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The sysctl that makes conntrack count each flow's packets and bytes
/// (the flow log's end lines); per network namespace.
pub const CONNTRACK_ACCT: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";

/// Where the per-namespace instance locks live.
pub const LOCK_DIR: &str = "/run/cvpn-gw";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "another cvpn-gw{} is running in this network namespace; \
         it keeps its tun device, nftables table and ip_forward (lock {})",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), .lock.display()
    )]
    Running { pid: Option<u32>, lock: PathBuf },
    #[error(
        "state_dir {}: another live cvpn-gw{} uses it (its lease table); give each gateway its own",
        .dir.display(), .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    StateDirInUse { pid: Option<u32>, dir: PathBuf },
    #[error("{}: {source}", .path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Nft(#[from] nft::NftError),
    #[error("routes: {0}")]
    Ip(#[from] sites::IpError),
    #[error("{path}: {source}")]
    Sysctl {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("target_networks[{index}].interface: no interface {name:?} on this host")]
    NoInterface { index: usize, name: String },
    #[error(
        "target_networks[{index}]: interface {name:?} has no IPv4 address to use as the ENI address"
    )]
    NoAddress { index: usize, name: String },
    #[error("target_networks[{index}].eni_address: {addr} is not an address of {name:?}")]
    NotOnInterface {
        index: usize,
        name: String,
        addr: Ipv4Addr,
    },
}

/// Held for the gateway's lifetime: while it is, no other gateway in the
/// same network namespace starts (the lock is released by the kernel when
/// the process dies, however it dies).
pub struct InstanceLock {
    _file: File,
}

/// The lock file of this process's network namespace: the namespaces'
/// inode numbers tell them apart, so gateways in different namespaces of
/// one host (as the tests run them) do not exclude each other.
fn lock_path(dir: &Path) -> Result<PathBuf, SetupError> {
    let ns = "/proc/self/ns/net";
    let meta = std::fs::metadata(ns).map_err(|source| SetupError::Lock {
        path: ns.into(),
        source,
    })?;
    Ok(dir.join(format!("netns-{}-{}.lock", meta.dev(), meta.ino())))
}

/// Takes the instance lock in `dir` ([`LOCK_DIR`]) before anything on the
/// host is touched; fails, naming the holder's pid, if a gateway holds it.
pub fn lock_instance(dir: &Path) -> Result<InstanceLock, SetupError> {
    let path = lock_path(dir)?;
    lock(dir, &path).map_err(|held| match held {
        Held::By(pid) => SetupError::Running { pid, lock: path },
        Held::Failed(e) => e,
    })
}

/// Takes the lock of `state_dir` (`state_dir/cvpn-gw.lock`): two gateways
/// on one host (in different network namespaces) sharing a state
/// directory would overwrite each other's lease table.
pub fn lock_state_dir(state_dir: &Path) -> Result<InstanceLock, SetupError> {
    let path = state_dir.join("cvpn-gw.lock");
    lock(state_dir, &path).map_err(|held| match held {
        Held::By(pid) => SetupError::StateDirInUse {
            pid,
            dir: state_dir.to_path_buf(),
        },
        Held::Failed(e) => e,
    })
}

/// Why a lock was not taken.
enum Held {
    /// Another process holds it (its pid, if it wrote one).
    By(Option<u32>),
    Failed(SetupError),
}

/// Locks `path` (in `dir`, created if needed) exclusively for the
/// process's lifetime and writes our pid into it.
fn lock(dir: &Path, path: &Path) -> Result<InstanceLock, Held> {
    let io = |source| {
        Held::Failed(SetupError::Lock {
            path: path.to_path_buf(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(Held::By(text.trim().parse().ok()));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(InstanceLock { _file: file })
}

/// True if `pid` is a live cvpn-gw in this network namespace.
fn is_live_gateway(pid: u32) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
    let same_ns = match (
        std::fs::metadata(proc.join("ns/net")),
        std::fs::metadata("/proc/self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    };
    pid != std::process::id() && comm.trim() == "cvpn-gw" && same_ns
}

/// Removes what a previous run left behind: our nftables table (restoring
/// the sysctls it recorded). A table whose recorded owner is a live
/// gateway is left alone and refused, lock or not.
pub fn clear_stale() -> Result<bool, SetupError> {
    // Our routing rules without our table would be a crash's too; the
    // instance lock is held, so they are no live gateway's.
    let rules = aliases::clear()?;
    let Some(owner) = nft::existing_table() else {
        return Ok(rules > 0);
    };
    if let Some(pid) = owner.pid.filter(|p| is_live_gateway(*p)) {
        return Err(SetupError::Running {
            pid: Some(pid),
            lock: PathBuf::from(LOCK_DIR),
        });
    }
    restore(IP_FORWARD, &owner.ip_forward_before)?;
    restore(CONNTRACK_ACCT, &owner.conntrack_acct_before)?;
    nft::remove()?;
    Ok(true)
}

/// Writes `before` back to the sysctl at `path`, unless it is unknown.
fn restore(path: &'static str, before: &str) -> Result<(), SetupError> {
    if before.is_empty() {
        return Ok(());
    }
    std::fs::write(path, before).map_err(|source| SetupError::Sysctl { path, source })
}

fn read_sysctl(path: &'static str) -> Result<String, SetupError> {
    std::fs::read_to_string(path)
        .map(|v| v.trim().to_string())
        .map_err(|source| SetupError::Sysctl { path, source })
}

/// Resolves each target network's ENI address: the configured one, checked
/// to be on the interface, or the interface's primary IPv4 address.
pub async fn eni_addresses(targets: &[TargetNetwork]) -> Result<Vec<Ipv4Addr>, SetupError> {
    let nl = |e: rtnetlink::Error| SetupError::Netlink(e.to_string());
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| SetupError::Netlink(e.to_string()))?;
    let task = tokio::spawn(conn);
    let mut out = Vec::new();
    for (index, t) in targets.iter().enumerate() {
        let no_if = || SetupError::NoInterface {
            index,
            name: t.interface.clone(),
        };
        let link = match handle
            .link()
            .get()
            .match_name(t.interface.clone())
            .execute()
            .try_next()
            .await
        {
            Ok(Some(link)) => link,
            Ok(None) | Err(_) => return Err(no_if()),
        };
        let mut addrs = Vec::new();
        let mut stream = handle
            .address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute();
        while let Some(msg) = stream.try_next().await.map_err(nl)? {
            for attr in msg.attributes {
                if let AddressAttribute::Address(std::net::IpAddr::V4(a)) = attr {
                    addrs.push(a);
                }
            }
        }
        let addr = match t.eni_address {
            Some(a) if addrs.contains(&a) => a,
            Some(addr) => {
                return Err(SetupError::NotOnInterface {
                    index,
                    name: t.interface.clone(),
                    addr,
                });
            }
            None => *addrs.first().ok_or_else(|| SetupError::NoAddress {
                index,
                name: t.interface.clone(),
            })?,
        };
        out.push(addr);
    }
    task.abort();
    Ok(out)
}

/// Lengthens the tun device's queue: replies to thousands of clients
/// arrive in bursts, and the default of 500 packets drops some of them
/// before the gateway reads them.
pub async fn set_txqueuelen(name: &str, len: u32) -> Result<(), SetupError> {
    let nl = |e: rtnetlink::Error| SetupError::Netlink(e.to_string());
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| SetupError::Netlink(e.to_string()))?;
    let task = tokio::spawn(conn);
    let msg = rtnetlink::LinkUnspec::new_with_name(name)
        .txqueuelen(len)
        .build();
    let result = handle.link().set(msg).execute().await.map_err(nl);
    task.abort();
    result
}

/// What `apply` changed, to undo at exit.
pub struct Applied {
    before: nft::TableOwner,
}

/// Installs the table `ruleset_for(its owner record)` and turns forwarding
/// on, and with `count_flows` conntrack's per-flow counters too.
pub fn apply(
    count_flows: bool,
    ruleset_for: impl FnOnce(&nft::TableOwner) -> nftables::schema::Nftables<'static>,
) -> Result<Applied, SetupError> {
    let before = nft::TableOwner {
        pid: Some(std::process::id()),
        ip_forward_before: read_sysctl(IP_FORWARD)?,
        // Absent until the conntrack module loads (our table loads it),
        // and then at the kernel's default, off.
        conntrack_acct_before: match count_flows {
            true => read_sysctl(CONNTRACK_ACCT).unwrap_or_else(|_| "0".into()),
            false => String::new(),
        },
    };
    nft::install(&ruleset_for(&before))?;
    let applied = Applied { before };
    let mut on = vec![IP_FORWARD];
    if count_flows {
        on.push(CONNTRACK_ACCT);
    }
    for path in on {
        if let Err(source) = std::fs::write(path, "1") {
            let _ = applied.undo();
            return Err(SetupError::Sysctl { path, source });
        }
    }
    Ok(applied)
}

impl Applied {
    /// The owner record of the installed table (to install it anew).
    pub fn owner(&self) -> &nft::TableOwner {
        &self.before
    }

    /// Removes the table and restores the sysctls.
    pub fn undo(self) -> Result<(), SetupError> {
        let forward = restore(IP_FORWARD, &self.before.ip_forward_before);
        let acct = restore(CONNTRACK_ACCT, &self.before.conntrack_acct_before);
        nft::remove()?;
        forward.and(acct)
    }
}
