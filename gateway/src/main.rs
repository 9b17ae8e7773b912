//! `cvpn-gw`: the command line of the endpoint.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use cvpn_gw::config::Config;
use cvpn_gw::{control, serve};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "cvpn-gw",
    version,
    about = "cvpn endpoint: mutual-TLS client VPN gateway"
)]
struct Cli {
    /// How the gateway logs on standard error
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// A log format.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line (tracing's JSON format)
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the endpoint
    Serve {
        /// The endpoint's configuration file (TOML)
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate the configuration; print the effective route table and rules
    Check {
        /// The endpoint's configuration file (TOML)
        #[arg(long)]
        config: PathBuf,
    },
    /// Write a client profile with the CA, certificate and key inline
    ExportProfile {
        /// The endpoint's configuration file (TOML)
        #[arg(long)]
        config: PathBuf,
        /// The cvpn-pki directory holding the client's certificate and key
        #[arg(long)]
        pki: PathBuf,
        /// The client's certificate name
        #[arg(long)]
        client: String,
        /// HOST:PORT clients connect to, repeatable (default: every live
        /// node's advertised address in a cluster, else the listen address)
        #[arg(long)]
        remote: Vec<String>,
        /// The profile file to write, mode 0600 (default: standard output)
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a new tls-crypt key for OpenVPN clients (OpenVPN's static key
    /// format); name it in the configuration's [tls] tls_crypt
    TlsCryptKey {
        /// The key file to write (mode 0600)
        #[arg(long)]
        out: PathBuf,
    },
    /// List the live connections
    Connections {
        /// The endpoint's control socket
        #[arg(long, default_value = cvpn_gw::config::DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
        /// The sessions and drop counters as JSON
        #[arg(long)]
        json: bool,
    },
    /// Re-read the configuration and apply it live (as SIGHUP); exits
    /// non-zero, naming the problem, when the endpoint refuses it
    Reload {
        /// The endpoint's control socket
        #[arg(long, default_value = cvpn_gw::config::DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
    },
    /// Reopen the connection log and the flow log under their names (as
    /// SIGUSR1), after logrotate moved them; exits non-zero, naming the
    /// file, when one cannot be reopened
    ReopenLogs {
        /// The endpoint's control socket
        #[arg(long, default_value = cvpn_gw::config::DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
    },
    /// The endpoint's cluster (with [cluster])
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Drain the gateway: refuse new sessions, move every client to
    /// another gateway of its profile, and exit once empty or at the
    /// timeout; returns when the gateway has exited
    Drain {
        /// The endpoint's control socket
        #[arg(long, default_value = cvpn_gw::config::DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
        /// How long the clients have to leave (e.g. 60s, 2m)
        #[arg(long, default_value = "60s", value_parser = commands::parse_duration)]
        timeout: std::time::Duration,
    },
    /// End connections, by id or by certificate common name
    Terminate {
        /// The endpoint's control socket
        #[arg(long, default_value = cvpn_gw::config::DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
        /// The session's connection id
        #[arg(long, conflicts_with = "cn", required_unless_present = "cn")]
        connection_id: Option<String>,
        /// Every session of this certificate common name
        #[arg(long)]
        cn: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The cluster's live nodes; exits 1, naming the keys, when their
    /// policies differ
    Status {
        /// The endpoint's configuration file (TOML), with [cluster]
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli) {
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
        Command::Serve { config: path } => {
            let config = Config::load(&path)?;
            runtime()?.block_on(serve::serve(config, Some(path)))
        }
        Command::Check { config } => commands::check(&config),
        Command::TlsCryptKey { out } => commands::tls_crypt_key(&out),
        Command::ExportProfile {
            config,
            pki,
            client,
            remote,
            out,
        } => commands::export_profile(&config, &pki, &client, &remote, out.as_deref()),
        Command::Connections { control, json } => {
            let v = runtime()?.block_on(control::request(
                &control,
                json!({"command": "connections"}),
            ))?;
            commands::print_connections(&v, json)
        }
        Command::Reload { control } => {
            let v =
                runtime()?.block_on(control::request(&control, json!({"command": "reload"})))?;
            let changed: Vec<&str> = v["changed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .collect();
            if changed.is_empty() {
                println!("reloaded: nothing changed");
            } else {
                println!("reloaded: {} changed", changed.join(", "));
            }
            Ok(())
        }
        Command::ReopenLogs { control } => {
            let v = runtime()?.block_on(control::request(
                &control,
                json!({"command": "reopen_logs"}),
            ))?;
            for log in v["reopened"].as_array().into_iter().flatten() {
                println!("reopened {}", log.as_str().unwrap_or("?"));
            }
            Ok(())
        }
        Command::Cluster {
            command: ClusterCommand::Status { config },
        } => {
            let config = Config::load(&config)?;
            let agree = runtime()?.block_on(commands::cluster_status(&config))?;
            if !agree {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Drain { control, timeout } => {
            runtime()?.block_on(commands::drain(&control, timeout))
        }
        Command::Terminate {
            control,
            connection_id,
            cn,
        } => {
            let req =
                json!({"command": "terminate", "connection_id": connection_id, "common_name": cn});
            let v = runtime()?.block_on(control::request(&control, req))?;
            if let Some(e) = v["cluster-error"].as_str() {
                eprintln!("WARNING: the cluster's other nodes were not reached: {e}");
            }
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
