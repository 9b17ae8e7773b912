//! The commands of `cvpn-gw` other than `serve`: what they print.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cvpn_gw::config::digest::differing;
use cvpn_gw::config::{Config, RouteTarget};
use cvpn_gw::control;
use cvpn_gw::export::{ProfileParts, render_profile};
use cvpn_gw::policy::Policy;
use cvpn_gw::protocol::openvpn::tls_crypt::StaticKey;
use cvpn_gw::tls::CrlHealth;
use cvpn_proto::text::{Untrusted, untrusted};
use serde_json::{Value, json};

/// A byte counter's cell: "-" for another node's session (its counters
/// are that node's).
fn count(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".into(), |n| n.to_string())
}

/// Prints the admin socket's answer to `connections`: as JSON, or a table.
pub fn print_connections(v: &Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let conns: Vec<&Value> = v["connections"].as_array().into_iter().flatten().collect();
    // With [cluster], each session says on which node it is.
    let clustered = conns.iter().any(|c| c.get("node").is_some());
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            let s = |k: &str| Untrusted::capped(c[k].as_str().unwrap_or(""), 64).to_string();
            let mut row = vec![
                s("connection-id"),
                s("common-name"),
                s("client-ip"),
                format!("{}:{}", s("device-ip"), s("port")),
                format!("{}/{}", s("protocol"), s("transport-protocol")),
                count(&c["ingress-bytes"]),
                count(&c["egress-bytes"]),
            ];
            if clustered {
                row.push(s("node"));
            }
            row
        })
        .collect();
    let mut header = vec![
        "CONNECTION ID",
        "COMMON NAME",
        "CLIENT IP",
        "DEVICE",
        "PROTOCOL",
        "INGRESS B",
        "EGRESS B",
    ];
    if clustered {
        header.push("NODE");
    }
    if let Some(e) = v["cluster-error"].as_str() {
        eprintln!(
            "WARNING: this node's sessions only: {}",
            Untrusted::capped(e, 300)
        );
    }
    // A common name is whatever the CA signed: escaped above so it
    // cannot drive the terminal; columns as wide as their widest cell.
    print_table(&header, &rows);
    Ok(())
}

/// `check`: validates the configuration and prints the effective route
/// table and rules.
pub fn check(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    let policy = Policy::compile(&config).context("authorization_rules")?;
    drop(policy);
    cvpn_gw::tls::Acceptor::new(&config.tls)?;
    if let Some(path) = &config.tls.tls_crypt {
        StaticKey::load(path)?;
    }
    match cvpn_gw::tls::check_crl(&config.tls)? {
        CrlHealth::Current => {}
        CrlHealth::Absent => eprintln!("WARNING: {}", CrlHealth::Absent),
        expired => bail!("{expired}"),
    }
    for t in config.target_networks.iter().filter(|t| !t.snat) {
        eprintln!(
            "WARNING: target network {} has snat = false: its hosts see client addresses \
             and need a route back to {} through the gateway's address on {}",
            t.id, config.client_cidr, t.interface
        );
    }
    println!("{}: valid", path.display());
    println!(
        "client_cidr {}  split_tunnel {}  listen {}",
        config.client_cidr, config.split_tunnel, config.listen
    );
    println!("\nRoute table:");
    println!(
        "  {:<20} {:<12} {:<10} DESCRIPTION",
        "DESTINATION", "TARGET", "ORIGIN"
    );
    for r in &config.routes {
        let target = match r.target {
            RouteTarget::Network(i) => config.target_networks[i].id.clone(),
            RouteTarget::Local => "local".into(),
            RouteTarget::ClientNetwork(i) => config.client_networks[i].common_name.clone(),
        };
        println!(
            "  {:<20} {:<12} {:<10} {}",
            r.destination.to_string(),
            target,
            r.origin.to_string(),
            r.description.as_deref().unwrap_or("")
        );
    }
    if !config.client_networks.is_empty() {
        println!("\nClient networks:");
        println!("  {:<20} {:<24} REACHABLE FROM", "CIDR", "CARRIED BY");
        for n in &config.client_networks {
            let from: Vec<&str> = n
                .reachable_from
                .iter()
                .map(|&t| config.target_networks[t].id.as_str())
                .collect();
            println!(
                "  {:<20} {:<24} {}",
                n.cidr.to_string(),
                n.common_name,
                if from.is_empty() {
                    "-".into()
                } else {
                    from.join(", ")
                }
            );
        }
        for n in &config.client_networks {
            for &t in &n.reachable_from {
                let t = &config.target_networks[t];
                eprintln!(
                    "NOTE: hosts of {} reach {} through the gateway: their route table needs \
                     {} via the gateway's address on {}",
                    t.id, n.cidr, n.cidr, t.interface
                );
            }
        }
    }
    println!("\nAuthorization rules:");
    println!("  {:<20} {:<20} DESCRIPTION", "DESTINATION", "GRANTED TO");
    for r in &config.rules {
        let who = r
            .access_group
            .as_deref()
            .map(|g| format!("group {g}"))
            .unwrap_or_else(|| "all users".into());
        println!(
            "  {:<20} {:<20} {}",
            r.destination.to_string(),
            who,
            r.description.as_deref().unwrap_or("")
        );
    }
    if config.rules.is_empty() {
        println!("  (none: every destination is denied)");
    }
    Ok(())
}

/// HOST:PORT split (the host without IPv6 brackets).
fn host_port(text: &str) -> Result<(String, u16)> {
    let (h, p) = text.rsplit_once(':').context("expected HOST:PORT")?;
    let port = p
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .context("bad port")?;
    Ok((h.trim_matches(['[', ']']).to_string(), port))
}

/// Where clients connect without `--remote`: every live node's advertised
/// address in a cluster (but draining ones), else the listen address.
fn default_remotes(config: &Config) -> Result<Vec<(String, u16)>> {
    if let Some(cluster) = &config.cluster {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let nodes = rt
            .block_on(cvpn_gw::cluster::nodes::list(cluster))
            .context("cannot list the cluster's nodes (give --remote HOST:PORT)")?;
        let remotes: Vec<_> = nodes
            .iter()
            .filter(|n| !n.draining)
            .filter_map(|n| host_port(&n.advertise).ok())
            .collect();
        if remotes.is_empty() {
            bail!("no live node in the cluster: give --remote HOST:PORT");
        }
        return Ok(remotes);
    }
    if config.listen.ip().is_unspecified() {
        bail!(
            "listen is {}: give the address clients use with --remote HOST:PORT",
            config.listen
        );
    }
    Ok(vec![(config.listen.ip().to_string(), config.listen.port())])
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `export-profile`: writes a client profile with the CA, certificate and
/// key inline.
pub fn export_profile(
    config: &Path,
    pki: &Path,
    client: &str,
    remotes: &[String],
    out: Option<&Path>,
) -> Result<()> {
    cvpn_pki::names::validate_name(client)?;
    let config = Config::load(config)?;
    let remotes = match remotes {
        [] => default_remotes(&config)?,
        given => given
            .iter()
            .map(|r| host_port(r).with_context(|| format!("--remote {r:?}")))
            .collect::<Result<_>>()?,
    };
    let server_der = cvpn_pki::store::read_pem(&config.tls.cert, "CERTIFICATE")?;
    let info = cvpn_pki::inspect_cert(&server_der)
        .with_context(|| config.tls.cert.display().to_string())?;
    let server_name = info
        .dns_names
        .first()
        .cloned()
        .or(info.common_name)
        .with_context(|| format!("{}: no DNS name to verify", config.tls.cert.display()))?;
    let ca = read(&pki.join("ca.crt"))?;
    let cert = read(&pki.join("issued").join(format!("{client}.crt")))?;
    let key = read(&pki.join("private").join(format!("{client}.key")))?;
    let tls_crypt = match &config.tls.tls_crypt {
        Some(path) => Some(StaticKey::load(path)?.to_text()),
        None => None,
    };
    let text = render_profile(&ProfileParts {
        remotes: &remotes,
        server_name: &server_name,
        ca_pem: &ca,
        cert_pem: &cert,
        key_pem: &key,
        udp: config.transport_protocol == cvpn_gw::config::TransportProtocol::Udp,
        tls_crypt: tls_crypt.as_deref(),
    });
    match out {
        Some(path) => {
            // A new 0600 file renamed over `path`: the key is never
            // readable by others, and a symlink at `path` is replaced,
            // never written through.
            cvpn_pki::store::write_atomic(path, text.as_bytes(), 0o600)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {} (it holds {client}'s private key)", path.display());
            eprintln!("{}", clients_taking(path));
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Which clients take a profile written to `path`: every one of them
/// reads its content unchanged, but OpenVPN 3 (OpenVPN Connect) insists
/// on the `.ovpn` extension.
fn clients_taking(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("ovpn") => {
            "clients: cvpn-client, openvpn 2.6 (openvpn --config) and OpenVPN Connect / OpenVPN 3 take it as it is"
        }
        _ => {
            "clients: cvpn-client and openvpn 2.6 (openvpn --config) take it as it is; \
OpenVPN Connect / OpenVPN 3 want it named .ovpn"
        }
    }
}

/// `tls-crypt-key`: writes a new OpenVPN tls-crypt key (mode 0600).
pub fn tls_crypt_key(out: &Path) -> Result<()> {
    let key = StaticKey::generate().context("no system randomness")?;
    cvpn_pki::store::write_atomic(out, key.to_text().as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "wrote {} (name it in [tls] tls_crypt; export-profile embeds it)",
        out.display()
    );
    Ok(())
}

/// `cluster status`: the live nodes and whether their policies agree
/// (false: they differ, and the keys were printed).
pub async fn cluster_status(config: &Config) -> Result<bool> {
    let Some(cluster) = &config.cluster else {
        bail!("{}: no [cluster] in this configuration", "cluster status");
    };
    let nodes = cvpn_gw::cluster::nodes::list(cluster).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                untrusted(&n.node).to_string(),
                untrusted(&n.advertise).to_string(),
                untrusted(&n.version).to_string(),
                n.sessions.to_string(),
                format!("{}s ago", now.saturating_sub(n.heartbeat).max(0)),
                if n.draining { "draining" } else { "serving" }.to_string(),
                untrusted(&n.policy_digest).to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "NODE",
            "ADVERTISE",
            "VERSION",
            "SESSIONS",
            "HEARTBEAT",
            "STATE",
            "POLICY",
        ],
        &rows,
    );
    println!(
        "{} live node(s) under {} in etcd ({})",
        nodes.len(),
        cluster.prefix,
        cluster.etcd.join(", ")
    );
    let mut agree = true;
    if let Some(first) = nodes.first() {
        for other in &nodes[1..] {
            let keys = differing(&first.policy, &other.policy);
            if !keys.is_empty() {
                agree = false;
                println!(
                    "policy differs: {} and {}: {}",
                    untrusted(&first.node),
                    untrusted(&other.node),
                    keys.iter()
                        .map(|k| untrusted(k).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    Ok(agree)
}

/// Prints rows under a header, each column as wide as its widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(header, rows));
}

/// The lines of a table: two spaces between columns, each column as wide
/// as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A duration as `--timeout` takes it: seconds, or a number with `s`,
/// `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 60s or 2m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// `cvpn-gw drain`: asks the gateway to drain, then waits until it has
/// exited (its control socket stops answering).
pub async fn drain(control: &Path, timeout: Duration) -> Result<()> {
    let started = std::time::Instant::now();
    let req = json!({"command": "drain", "timeout_secs": timeout.as_secs()});
    let v = control::request(control, req).await?;
    println!(
        "draining: {} session(s) told to move to another gateway",
        v["draining"]
    );
    // The gateway exits at the timeout at the latest; a little more for
    // its shutdown.
    let give_up = started + timeout + Duration::from_secs(15);
    let mut last = None;
    while std::time::Instant::now() < give_up {
        let req = json!({"command": "connections"});
        match control::request(control, req).await {
            Ok(v) => {
                let here = v["connections"].as_array().map(|l| {
                    l.iter()
                        .filter(|c| c.get("ingress-bytes").is_some())
                        .count()
                });
                if here != last {
                    println!("{} session(s) left", here.unwrap_or(0));
                    last = here;
                }
            }
            Err(_) => {
                println!(
                    "drained: the gateway exited after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "the gateway still runs {}s after the drain began",
        give_up.duration_since(started).as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").unwrap_err().contains("60s"));
        assert!(parse_duration("5d").unwrap_err().contains("unit"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn table_columns_stay_aligned_whatever_the_widths() {
        let rows = [
            vec![
                "cvpn-conn-1".to_string(),
                "a".repeat(40),
                "10.250.0.2".into(),
            ],
            vec!["cvpn-conn-2".to_string(), "bo".into(), "10.250.0.3".into()],
        ];
        let text = table(&["CONNECTION ID", "COMMON NAME", "CLIENT IP"], &rows);
        let starts: Vec<usize> = text
            .lines()
            .map(|l| l.find("10.250.").or_else(|| l.find("CLIENT IP")).unwrap())
            .collect();
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{text}");
    }
}
