//! The kernel routes of client networks: each one's CIDR on the tun
//! device, so that traffic for a site from a target network (a host of a
//! `reachable_from` network, or the ENI address's NATed replies) comes to
//! the gateway. They go with the tun device when the gateway exits; a
//! reload brings them in line with the new client networks.

use std::process::Command;

use ipnet::Ipv4Net;

/// The protocol number our routes carry (`ip route ... proto 99`), so
/// that a reload tells them from the device's own connected route.
const PROTO: &str = "99";

/// Why routes or rules could not be set.
#[derive(Debug, thiserror::Error)]
pub enum IpError {
    /// `ip` could not be run.
    #[error("cannot run ip (is iproute2 installed?): {0}")]
    Spawn(std::io::Error),
    /// `ip` refused.
    #[error("{command}: {stderr}")]
    Refused { command: String, stderr: String },
}

/// Runs `ip ARGS`; its output.
pub(super) fn ip(args: &[&str]) -> Result<String, IpError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(IpError::Spawn)?;
    if !out.status.success() {
        return Err(IpError::Refused {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The client-network routes on `tun` now.
fn present(tun: &str) -> Result<Vec<Ipv4Net>, IpError> {
    let listing = ip(&["-j", "-4", "route", "show", "dev", tun, "proto", PROTO])?;
    let routes: serde_json::Value = serde_json::from_str(&listing).unwrap_or_default();
    Ok(routes
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    // A host route is listed without its /32.
                    let dst = r["dst"].as_str()?;
                    dst.parse()
                        .ok()
                        .or_else(|| dst.parse::<std::net::Ipv4Addr>().ok().map(Ipv4Net::from))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Makes the client-network routes on `tun` exactly `wanted`.
pub fn sync(tun: &str, wanted: &[Ipv4Net]) -> Result<(), IpError> {
    let have = present(tun)?;
    for net in wanted.iter().filter(|n| !have.contains(n)) {
        let dst = net.to_string();
        ip(&["-4", "route", "replace", &dst, "dev", tun, "proto", PROTO])?;
    }
    for net in have.iter().filter(|n| !wanted.contains(n)) {
        let dst = net.to_string();
        ip(&["-4", "route", "del", &dst, "dev", tun, "proto", PROTO])?;
    }
    Ok(())
}
