//! The routing of aliased target networks: networks with the same real
//! CIDR on different interfaces coexist because each has its own routing
//! table, chosen by the mark the nftables table puts on packets to its
//! alias (`ip rule fwmark M lookup M`, M from [`nft::ALIAS_MARK_BASE`]).
//! Rules and tables outlive the process, so they are removed at exit and
//! a crashed run's are cleared at the next start (after the instance
//! lock: never a live gateway's).

use super::nft::{ALIAS_MARK_BASE, ALIAS_MARK_MASK, NatTarget};
use super::sites::{IpError, ip};

/// The preference of our rules: before the main table's (32766).
const PREF: &str = "3276";
/// The protocol number our routes carry.
const PROTO: &str = "99";

/// Adds each aliased network's rule and table: its real CIDR on its
/// interface.
pub fn apply(targets: &[NatTarget]) -> Result<(), IpError> {
    for t in targets {
        let Some(a) = &t.alias else { continue };
        let mark = a.mark.to_string();
        let real = a.real.to_string();
        ip(&[
            "-4", "rule", "add", "pref", PREF, "fwmark", &mark, "lookup", &mark,
        ])?;
        ip(&[
            "-4",
            "route",
            "replace",
            &real,
            "dev",
            &t.interface,
            "table",
            &mark,
            "proto",
            PROTO,
        ])?;
    }
    Ok(())
}

/// Removes every rule and table of ours (those whose table id is in our
/// mark range); returns how many rules there were.
pub fn clear() -> Result<usize, IpError> {
    let listing = ip(&["-j", "-4", "rule", "show"])?;
    let rules: serde_json::Value = serde_json::from_str(&listing).unwrap_or_default();
    let ours: Vec<u32> = rules
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["table"].as_str()?.parse::<u32>().ok())
        .filter(|t| t & ALIAS_MARK_MASK == ALIAS_MARK_BASE)
        .collect();
    for table in &ours {
        let t = table.to_string();
        ip(&[
            "-4", "rule", "del", "pref", PREF, "fwmark", &t, "lookup", &t,
        ])?;
        ip(&["-4", "route", "flush", "table", &t])?;
    }
    Ok(ours.len())
}
