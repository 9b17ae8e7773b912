//! What forwarding needs on the gateway host, added at start and removed at
//! exit: IPv4 forwarding, the nftables table. The tun device and the
//! client-CIDR route (the tun's connected route) vanish with the process.

pub mod nft;

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;

use crate::config::TargetNetwork;

pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Nft(#[from] nft::NftError),
    #[error("{IP_FORWARD}: {0}")]
    Sysctl(std::io::Error),
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

/// Removes what a previous run left behind: our nftables table (restoring
/// the ip_forward value it recorded).
pub fn clear_stale() -> Result<bool, SetupError> {
    let Some(before) = nft::stale_ip_forward() else {
        return Ok(false);
    };
    if !before.is_empty() {
        std::fs::write(IP_FORWARD, &before).map_err(SetupError::Sysctl)?;
    }
    nft::remove()?;
    Ok(true)
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
    ip_forward_before: String,
}

pub fn apply(script_for: impl FnOnce(&str) -> String) -> Result<Applied, SetupError> {
    let before = std::fs::read_to_string(IP_FORWARD).map_err(SetupError::Sysctl)?;
    nft::install(&script_for(&before))?;
    if before.trim() != "1"
        && let Err(e) = std::fs::write(IP_FORWARD, "1")
    {
        let _ = nft::remove();
        return Err(SetupError::Sysctl(e));
    }
    Ok(Applied {
        ip_forward_before: before.trim().to_string(),
    })
}

impl Applied {
    pub fn undo(self) -> Result<(), SetupError> {
        let restore = if self.ip_forward_before != "1" {
            std::fs::write(IP_FORWARD, &self.ip_forward_before).map_err(SetupError::Sysctl)
        } else {
            Ok(())
        };
        nft::remove()?;
        restore
    }
}
