//! Pushed DNS servers: through systemd-resolved when it runs, else by
//! rewriting /etc/resolv.conf with the original kept inside the file (so a
//! client killed mid-session is undone by the next start) and restored on
//! exit. The file is rewritten in place, not replaced: under `ip netns exec`
//! it is a bind mount.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

const MARKER: &str =
    "# cvpn-client: DNS servers pushed by the endpoint; the original is restored on exit";
const ORIGINAL: &str = "#| ";
const RESOLVED_SOCKET: &str = "/run/systemd/resolve/io.systemd.Resolve";

/// The resolv.conf text that uses `servers`, carrying `original`.
pub fn render(servers: &[Ipv4Addr], original: &str) -> String {
    let mut s = format!("{MARKER}\n");
    for ns in servers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    for line in original.lines() {
        s.push_str(ORIGINAL);
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// The original text, if `text` is one of ours.
pub fn original_of(text: &str) -> Option<String> {
    if !text.starts_with(MARKER) {
        return None;
    }
    let mut out = String::new();
    for line in text.lines().filter_map(|l| l.strip_prefix(ORIGINAL)) {
        out.push_str(line);
        out.push('\n');
    }
    Some(out)
}

#[derive(Debug)]
pub enum Dns {
    None,
    Resolved { ifname: String },
    ResolvConf { path: PathBuf, original: String },
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("resolvectl: {0}")]
    Resolvectl(String),
}

fn resolvectl(args: &[&str]) -> Result<(), DnsError> {
    let out = Command::new("resolvectl")
        .args(args)
        .output()
        .map_err(|e| DnsError::Resolvectl(e.to_string()))?;
    if !out.status.success() {
        return Err(DnsError::Resolvectl(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

fn write_in_place(path: &Path, text: &str) -> Result<(), DnsError> {
    std::fs::write(path, text).map_err(|source| DnsError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Restores a resolv.conf left by a client that did not exit cleanly.
pub fn clear_stale(path: &Path) -> Result<bool, DnsError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(false);
    };
    match original_of(&text) {
        Some(orig) => write_in_place(path, &orig).map(|()| true),
        None => Ok(false),
    }
}

pub fn apply(servers: &[Ipv4Addr], ifname: &str, resolv_conf: &Path) -> Result<Dns, DnsError> {
    if servers.is_empty() {
        return Ok(Dns::None);
    }
    if Path::new(RESOLVED_SOCKET).exists() && resolvectl(&["status", "--no-pager"]).is_ok() {
        let mut args = vec!["dns", ifname];
        let list: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        args.extend(list.iter().map(String::as_str));
        resolvectl(&args)?;
        resolvectl(&["domain", ifname, "~."])?;
        return Ok(Dns::Resolved {
            ifname: ifname.to_string(),
        });
    }
    let original = std::fs::read_to_string(resolv_conf).unwrap_or_default();
    write_in_place(resolv_conf, &render(servers, &original))?;
    Ok(Dns::ResolvConf {
        path: resolv_conf.to_path_buf(),
        original,
    })
}

impl Dns {
    pub fn undo(self) -> Result<(), DnsError> {
        match self {
            Dns::None => Ok(()),
            // The link's settings go with the tun device too; revert anyway
            // in case the device outlives us.
            Dns::Resolved { ifname } => resolvectl(&["revert", &ifname]),
            Dns::ResolvConf { path, original } => write_in_place(&path, &original),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_survives_the_round_trip() {
        let orig = "# from dhcp\nnameserver 198.18.0.53\nsearch corp\n";
        let ours = render(&[Ipv4Addr::new(192, 168, 1, 20)], orig);
        assert!(ours.contains("\nnameserver 192.168.1.20\n"));
        assert!(!ours.contains("\nnameserver 198.18.0.53"));
        assert_eq!(original_of(&ours).as_deref(), Some(orig));
        assert_eq!(original_of(orig), None);
        assert_eq!(original_of(&render(&[], "")).as_deref(), Some(""));
    }

    #[test]
    fn stale_file_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            render(&[Ipv4Addr::new(10, 0, 0, 1)], "nameserver 9.9.9.9\n"),
        )
        .unwrap();
        assert!(clear_stale(&path).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "nameserver 9.9.9.9\n"
        );
        assert!(!clear_stale(&path).unwrap());
    }
}
