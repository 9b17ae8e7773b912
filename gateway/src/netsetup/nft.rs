//! The gateway's own nftables table. It SNATs client traffic leaving each
//! target network's interface to that network's ENI address, lets only
//! replies (conntrack established/related) back toward the tunnel, and
//! drops tunnel traffic to the gateway host itself (the managed service's
//! ENI is not a host), but for DNS to a pushed server the host runs. The
//! table's comment records the value of net.ipv4.ip_forward before the
//! gateway changed it, so a run after a crash can restore it, and the pid
//! of the gateway that owns it, so a start never removes a live one's.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

pub const TABLE: &str = "cvpn_gw";
const PID_PREFIX: &str = "cvpn-gw pid=";
const FORWARD_PREFIX: &str = "ip_forward=";

/// One target network as the NAT needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatTarget {
    pub interface: String,
    pub eni_address: Ipv4Addr,
    pub snat: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (is the nftables package installed?): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

fn quote(s: &str) -> String {
    // Interface names were validated (printable, no quotes possible in
    // practice); escape anyway so the script cannot be broken out of.
    format!("\"{}\"", s.replace(['"', '\\'], ""))
}

/// The whole table as one nft script: applied in one transaction.
pub fn ruleset(
    tun: &str,
    client_cidr: Ipv4Net,
    targets: &[NatTarget],
    dns_servers: &[Ipv4Addr],
    ip_forward_before: &str,
    owner_pid: u32,
) -> String {
    let mut s = String::new();
    s.push_str(&format!("table ip {TABLE} {{\n"));
    s.push_str(&format!(
        "  comment \"{PID_PREFIX}{owner_pid} {FORWARD_PREFIX}{}\"\n",
        ip_forward_before.trim()
    ));
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    for t in targets.iter().filter(|t| t.snat) {
        s.push_str(&format!(
            "    ip saddr {client_cidr} oifname {} snat to {}\n",
            quote(&t.interface),
            t.eni_address
        ));
    }
    s.push_str("  }\n");
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    s.push_str(&format!(
        "    oifname {} ct state established,related accept\n",
        quote(tun)
    ));
    s.push_str(&format!("    oifname {} counter drop\n", quote(tun)));
    s.push_str("  }\n");
    s.push_str("  chain input {\n    type filter hook input priority filter; policy accept;\n");
    s.push_str(&format!(
        "    iifname {} ct state established,related accept\n",
        quote(tun)
    ));
    for dns in dns_servers {
        s.push_str(&format!(
            "    iifname {} ip daddr {dns} meta l4proto {{ tcp, udp }} th dport 53 accept\n",
            quote(tun)
        ));
    }
    s.push_str(&format!("    iifname {} counter drop\n", quote(tun)));
    s.push_str("  }\n}\n");
    s
}

fn nft(script: &str) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the table, replacing any previous one of ours, atomically.
pub fn install(script: &str) -> Result<(), NftError> {
    let full = format!("table ip {TABLE}\ndelete table ip {TABLE}\n{script}");
    nft(&full).map(|_| ())
}

pub fn remove() -> Result<(), NftError> {
    nft(&format!("table ip {TABLE}\ndelete table ip {TABLE}\n")).map(|_| ())
}

/// What the comment of a table of ours records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableOwner {
    /// The gateway that created the table (absent in tables of old runs).
    pub pid: Option<u32>,
    /// net.ipv4.ip_forward before that gateway set it; empty if unknown.
    pub ip_forward_before: String,
}

/// If a table of ours exists in this network namespace, what its comment
/// records.
pub fn existing_table() -> Option<TableOwner> {
    let out = Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(parse_comment(&String::from_utf8_lossy(&out.stdout)))
}

fn digits_after(listing: &str, prefix: &str) -> Option<String> {
    let start = listing.find(prefix)? + prefix.len();
    let value: String = listing[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!value.is_empty()).then_some(value)
}

fn parse_comment(listing: &str) -> TableOwner {
    TableOwner {
        pid: digits_after(listing, PID_PREFIX).and_then(|p| p.parse().ok()),
        ip_forward_before: digits_after(listing, FORWARD_PREFIX).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_snats_each_network_and_blocks_new_inbound() {
        let targets = [
            NatTarget {
                interface: "eth1".into(),
                eni_address: Ipv4Addr::new(192, 168, 1, 10),
                snat: true,
            },
            NatTarget {
                interface: "eth2".into(),
                eni_address: Ipv4Addr::new(172, 16, 0, 5),
                snat: false,
            },
        ];
        let s = ruleset(
            "cvpn-gw0",
            "10.250.0.0/22".parse().unwrap(),
            &targets,
            &[Ipv4Addr::new(192, 168, 1, 53)],
            "0\n",
            4242,
        );
        assert!(s.contains("ip saddr 10.250.0.0/22 oifname \"eth1\" snat to 192.168.1.10"));
        assert!(!s.contains("eth2"));
        assert!(s.contains("oifname \"cvpn-gw0\" ct state established,related accept"));
        assert!(s.contains("oifname \"cvpn-gw0\" counter drop"));
        assert!(s.contains("iifname \"cvpn-gw0\" counter drop"));
        assert!(s.contains(
            "iifname \"cvpn-gw0\" ip daddr 192.168.1.53 meta l4proto { tcp, udp } th dport 53 accept"
        ));
        assert_eq!(
            parse_comment(&s),
            TableOwner {
                pid: Some(4242),
                ip_forward_before: "0".into()
            }
        );
    }

    #[test]
    fn comment_parsing() {
        // A table of a run before the pid was recorded.
        assert_eq!(
            parse_comment("table ip cvpn_gw {\n\tcomment \"cvpn-gw ip_forward=1\""),
            TableOwner {
                pid: None,
                ip_forward_before: "1".into()
            }
        );
        assert_eq!(parse_comment("table ip cvpn_gw {}"), TableOwner::default());
    }
}
