//! `cvpn-gw`: the command line of the endpoint.

mod control;
mod datapath;
mod listener;
mod metrics_http;
mod serve;
mod session;
mod udp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use cvpn_gw::config::{Config, RouteTarget};
use cvpn_gw::export::{ProfileParts, render_profile};
use cvpn_gw::policy::Policy;
use cvpn_gw::tls::CrlHealth;
use cvpn_proto::text::Untrusted;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "cvpn-gw",
    version,
    about = "cvpn endpoint: mutual-TLS client VPN gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the endpoint
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate the configuration; print the effective route table and rules
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Write a client profile with the CA, certificate and key inline
    ExportProfile {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        pki: PathBuf,
        #[arg(long)]
        client: String,
        /// HOST:PORT clients connect to (default: the listen address)
        #[arg(long)]
        remote: Option<String>,
        /// Default: standard output
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the live connections
    Connections {
        #[arg(long, default_value = cvpn_gw::config::DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// End connections, by id or by certificate common name
    Terminate {
        #[arg(long, default_value = cvpn_gw::config::DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
        #[arg(long, conflicts_with = "cn", required_unless_present = "cn")]
        connection_id: Option<String>,
        #[arg(long)]
        cn: Option<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cvpn-gw: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(serve::serve(config))
        }
        Command::Check { config } => check(&config),
        Command::ExportProfile {
            config,
            pki,
            client,
            remote,
            out,
        } => export_profile(&config, &pki, &client, remote.as_deref(), out.as_deref()),
        Command::Connections { control, json } => {
            let v = runtime()?.block_on(control::request(
                &control,
                json!({"command": "connections"}),
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<28} {:<20} {:<15} {:<22} {:>12} {:>12}",
                "CONNECTION ID", "COMMON NAME", "CLIENT IP", "DEVICE", "INGRESS B", "EGRESS B"
            );
            for c in v["connections"].as_array().into_iter().flatten() {
                // A common name is whatever the CA signed: escape it so it
                // cannot drive the terminal.
                let s = |k: &str| Untrusted::capped(c[k].as_str().unwrap_or(""), 64).to_string();
                println!(
                    "{:<28} {:<20} {:<15} {:<22} {:>12} {:>12}",
                    s("connection-id"),
                    s("common-name"),
                    s("client-ip"),
                    format!("{}:{}", s("device-ip"), s("port")),
                    c["ingress-bytes"],
                    c["egress-bytes"]
                );
            }
            Ok(())
        }
        Command::Terminate {
            control,
            connection_id,
            cn,
        } => {
            let req =
                json!({"command": "terminate", "connection_id": connection_id, "common_name": cn});
            let v = runtime()?.block_on(control::request(&control, req))?;
            let ended = v["terminated"].as_array().map(Vec::len).unwrap_or(0);
            if ended == 0 {
                bail!("no matching connection");
            }
            for id in v["terminated"].as_array().into_iter().flatten() {
                println!("terminated {}", id.as_str().unwrap_or(""));
            }
            Ok(())
        }
    }
}

fn check(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    let policy = Policy::compile(&config).context("authorization_rules")?;
    drop(policy);
    cvpn_gw::tls::Acceptor::new(&config.tls)?;
    match cvpn_gw::tls::check_crl(&config.tls)? {
        CrlHealth::Current => {}
        CrlHealth::Absent => eprintln!("WARNING: {}", CrlHealth::Absent),
        expired => bail!("{expired}"),
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
        };
        println!(
            "  {:<20} {:<12} {:<10} {}",
            r.destination.to_string(),
            target,
            r.origin.to_string(),
            r.description.as_deref().unwrap_or("")
        );
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

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn export_profile(
    config: &Path,
    pki: &Path,
    client: &str,
    remote: Option<&str>,
    out: Option<&Path>,
) -> Result<()> {
    cvpn_pki::names::validate_name(client)?;
    let config = Config::load(config)?;
    let (host, port) = match remote {
        Some(r) => {
            let (h, p) = r
                .rsplit_once(':')
                .with_context(|| format!("--remote {r:?}: expected HOST:PORT"))?;
            (
                h.trim_matches(['[', ']']).to_string(),
                p.parse::<u16>()
                    .with_context(|| format!("--remote {r:?}: bad port"))?,
            )
        }
        None if config.listen.ip().is_unspecified() => {
            bail!(
                "listen is {}: give the address clients use with --remote HOST:PORT",
                config.listen
            )
        }
        None => (config.listen.ip().to_string(), config.listen.port()),
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
    let text = render_profile(&ProfileParts {
        remote_host: &host,
        remote_port: port,
        server_name: &server_name,
        ca_pem: &ca,
        cert_pem: &cert,
        key_pem: &key,
        udp: config.transport_protocol == cvpn_gw::config::TransportProtocol::Udp,
    });
    match out {
        Some(path) => {
            // A new 0600 file renamed over `path`: the key is never
            // readable by others, and a symlink at `path` is replaced,
            // never written through.
            cvpn_pki::store::write_atomic(path, text.as_bytes(), 0o600)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {} (it holds {client}'s private key)", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
