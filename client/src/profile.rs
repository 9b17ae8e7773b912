//! The client profile: OpenVPN configuration syntax, the directives cvpn
//! uses. Unknown directives are warnings; malformed ones are errors naming
//! the line. File reading is injected so the parser stays pure.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PORT: u16 = 443;
/// How long one remote may take without `server-poll-timeout`.
pub const DEFAULT_SERVER_POLL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub remotes: Vec<Remote>,
    pub remote_random: bool,
    /// `proto udp`: small packets take the endpoint's datagram channel
    /// when it offers one (the TLS session itself always runs over TCP).
    pub datagram: bool,
    /// `verify-x509-name NAME name`: the name checked on the gateway's
    /// certificate instead of the remote host.
    pub verify_name: Option<String>,
    /// Backoff between attempts: from `connect-retry N [MAX]`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// `connect-retry-max N`: give up after N failed rounds.
    pub retry_limit: Option<u32>,
    /// `server-poll-timeout N`: how long one remote may take to connect,
    /// authenticate and send its configuration before the next is tried.
    pub server_poll_timeout: Duration,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Unknown directives, with their line numbers.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ProfileError {
    /// 0 when the problem is the profile as a whole.
    pub line: usize,
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> ProfileError {
    ProfileError {
        line,
        message: message.into(),
    }
}

/// Splits a line into words; double quotes group words.
fn words(line: &str, n: usize) -> Result<Vec<String>, ProfileError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return Err(err(n, "unterminated quote"));
    }
    if any {
        out.push(cur);
    }
    Ok(out)
}

/// OpenVPN's protocol names: true for UDP, false for TCP, None if unknown.
fn transport(name: &str) -> Option<bool> {
    match name {
        "tcp" | "tcp-client" | "tcp4" | "tcp4-client" => Some(false),
        "udp" | "udp4" => Some(true),
        _ => None,
    }
}

const INLINE: [&str; 3] = ["ca", "cert", "key"];

/// The largest profile, or file a profile names, the client reads: far
/// beyond any real one (a CA bundle, an RSA-4096 key), small enough that a
/// profile naming `/dev/zero` cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a UTF-8 file of at most [`MAX_FILE_BYTES`]; a longer one (or an
/// endless one, as a device) is an error naming the limit.
pub fn read_capped(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes: not a profile, certificate or key"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

pub fn parse(
    text: &str,
    base: &Path,
    read_file: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Profile, ProfileError> {
    let mut remotes = Vec::new();
    let mut remote_random = false;
    let mut udp = false;
    let mut verify_name = None;
    let mut retry = (Duration::from_secs(1), Duration::from_secs(30));
    let mut retry_limit = None;
    let mut server_poll_timeout = DEFAULT_SERVER_POLL_TIMEOUT;
    let mut pems: [Option<String>; 3] = [None, None, None];
    let mut warnings = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((n, raw)) = lines.next() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(tag) = line.strip_prefix('<').and_then(|l| l.strip_suffix('>')) {
            let Some(slot) = INLINE.iter().position(|t| *t == tag) else {
                // Unknown inline blocks (tls-auth, ...) are skipped whole;
                // tls-crypt is for OpenVPN clients of the same profile.
                if tag != "tls-crypt" {
                    warnings.push(format!("line {n}: unknown block <{tag}> ignored"));
                }
                let end = format!("</{tag}>");
                if !lines.by_ref().any(|(_, l)| l.trim() == end) {
                    return Err(err(n, format!("<{tag}> is never closed with {end}")));
                }
                continue;
            };
            let end = format!("</{tag}>");
            let mut body = String::new();
            let mut closed = false;
            for (_, l) in lines.by_ref() {
                if l.trim() == end {
                    closed = true;
                    break;
                }
                body.push_str(l.trim());
                body.push('\n');
            }
            if !closed {
                return Err(err(n, format!("<{tag}> is never closed with {end}")));
            }
            if !body.contains("-----BEGIN ") {
                return Err(err(n, format!("<{tag}> holds no PEM block")));
            }
            set_once(&mut pems[slot], body, n, tag)?;
            continue;
        }
        let w = words(line, n)?;
        let args = &w[1..];
        let want = |lo: usize, hi: usize| -> Result<(), ProfileError> {
            if args.len() < lo || args.len() > hi {
                let what = if lo == hi {
                    format!("{lo}")
                } else {
                    format!("{lo} to {hi}")
                };
                return Err(err(
                    n,
                    format!("`{}` takes {what} argument(s), got {}", w[0], args.len()),
                ));
            }
            Ok(())
        };
        match w[0].as_str() {
            "client" | "nobind" | "persist-key" | "persist-tun" => want(0, 0)?,
            "dev" => {
                want(1, 1)?;
                if !args[0].starts_with("tun") {
                    return Err(err(
                        n,
                        format!("dev {}: cvpn supports only tun devices", args[0]),
                    ));
                }
            }
            "proto" => {
                want(1, 1)?;
                udp = transport(&args[0])
                    .ok_or_else(|| err(n, format!("proto {}: expected tcp or udp", args[0])))?;
            }
            "remote" => {
                want(1, 3)?;
                let port = match args.get(1) {
                    Some(p) => p
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| err(n, format!("remote: bad port {p:?}")))?,
                    None => DEFAULT_PORT,
                };
                if let Some(proto) = args.get(2) {
                    udp = transport(proto).ok_or_else(|| {
                        err(n, format!("remote: protocol {proto}: expected tcp or udp"))
                    })?;
                }
                remotes.push(Remote {
                    host: args[0].clone(),
                    port,
                });
            }
            "remote-cert-tls" => {
                // rustls already requires serverAuth of the server.
                want(1, 1)?;
                if args[0] != "server" {
                    return Err(err(n, "remote-cert-tls: only `server` makes sense here"));
                }
            }
            // What OpenVPN clients of the same profile need over UDP.
            "explicit-exit-notify" => want(0, 1)?,
            "remote-random" => {
                want(0, 0)?;
                remote_random = true;
            }
            "verify-x509-name" => {
                want(1, 2)?;
                match args.get(1).map(String::as_str) {
                    None | Some("name") => verify_name = Some(args[0].clone()),
                    Some(other) => {
                        return Err(err(
                            n,
                            format!(
                                "verify-x509-name type {other:?} is not supported (use `name`)"
                            ),
                        ));
                    }
                }
            }
            "connect-retry" => {
                want(1, 2)?;
                let secs = |s: &String| {
                    s.parse::<u64>().map_err(|_| {
                        err(
                            n,
                            format!("connect-retry: {s:?} is not a number of seconds"),
                        )
                    })
                };
                let initial = secs(&args[0])?;
                let max = args
                    .get(1)
                    .map(secs)
                    .transpose()?
                    .unwrap_or(initial.max(30));
                retry = (
                    Duration::from_secs(initial),
                    Duration::from_secs(max.max(initial)),
                );
            }
            "server-poll-timeout" => {
                want(1, 1)?;
                let secs = args[0]
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        err(
                            n,
                            format!(
                                "server-poll-timeout: {:?} is not a number of seconds",
                                args[0]
                            ),
                        )
                    })?;
                server_poll_timeout = Duration::from_secs(secs);
            }
            "connect-retry-max" => {
                want(1, 1)?;
                retry_limit = Some(args[0].parse::<u32>().map_err(|_| {
                    err(
                        n,
                        format!("connect-retry-max: {:?} is not a count", args[0]),
                    )
                })?);
            }
            d @ ("ca" | "cert" | "key") => {
                want(1, 1)?;
                let path = resolve(base, &args[0]);
                let text =
                    read_file(&path).map_err(|e| err(n, format!("{d} {}: {e}", path.display())))?;
                let slot = INLINE.iter().position(|t| t == &d).unwrap_or(0);
                set_once(&mut pems[slot], text, n, d)?;
            }
            other => warnings.push(format!("line {n}: unknown directive `{other}` ignored")),
        }
    }
    if remotes.is_empty() {
        return Err(err(0, "no `remote HOST PORT` line"));
    }
    let [ca, cert, key] = pems;
    let need = |v: Option<String>, tag: &str| {
        v.ok_or_else(|| err(0, format!("no <{tag}> block or `{tag} FILE` line")))
    };
    Ok(Profile {
        remotes,
        remote_random,
        datagram: udp,
        verify_name,
        retry_initial: retry.0,
        retry_max: retry.1,
        retry_limit,
        server_poll_timeout,
        ca_pem: need(ca, "ca")?,
        cert_pem: need(cert, "cert")?,
        key_pem: need(key, "key")?,
        warnings,
    })
}

fn set_once(
    slot: &mut Option<String>,
    value: String,
    n: usize,
    what: &str,
) -> Result<(), ProfileError> {
    if slot.is_some() {
        return Err(err(n, format!("{what} given twice")));
    }
    *slot = Some(value);
    Ok(())
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests;
