//! `cvpn-client connect profile.ovpn [--once]` (any file name).

mod datagram;
mod setup;
mod tls;
mod tunnel;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use cvpn_client::profile::{self, Profile, Remote};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::warn;

use crate::datagram::Channel;
use crate::setup::HostSetup;
use crate::tunnel::Connected;
use cvpn_client::netsetup::routes::Netlink;

#[derive(Parser)]
#[command(name = "cvpn-client", version, about = "Connect to a cvpn endpoint")]
struct Cli {
    /// How the client logs on standard error
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
    /// Connect with a profile; stays connected until interrupted
    Connect {
        /// The profile (OpenVPN syntax) `cvpn-gw export-profile` wrote
        profile: PathBuf,
        /// Exit when the connection ends or fails instead of reconnecting
        #[arg(long)]
        once: bool,
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
    let Command::Connect { profile, once } = cli.command;
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(connect(&profile, once)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cvpn-client: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_profile(path: &Path) -> Result<Profile> {
    let text =
        profile::read_capped(path).with_context(|| format!("cannot read {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let p = profile::parse(&text, base, profile::read_capped)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    for w in &p.warnings {
        warn!("{}: {w}", path.display());
    }
    Ok(p)
}

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    async fn any(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn connect(path: &Path, once: bool) -> Result<()> {
    let mut signals = Signals {
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
    };
    let profile = load_profile(path)?;
    let tls = tls::client_config(&profile).with_context(|| path.display().to_string())?;
    setup::clear_stale()
        .await
        .context("clearing what a previous run left")?;
    // Kept across reconnections; removed only here, when the client exits.
    let mut host = None;
    let outcome = keep_connected(&profile, tls, once, &mut signals, &mut host).await;
    if let Some(h) = host {
        h.teardown().await;
    }
    outcome
}

/// Connects, and reconnects with backoff unless `once`, until a signal or
/// a permanent failure. `host` holds the host set-up between connections.
async fn keep_connected(
    profile: &Profile,
    tls: std::sync::Arc<rustls::ClientConfig>,
    once: bool,
    signals: &mut Signals,
    host: &mut Option<HostSetup>,
) -> Result<()> {
    let mut backoff = profile.retry_initial;
    let mut failures = 0u32;
    // The remote last connected to: tried last next time (it went away).
    let mut left: Option<Remote> = None;
    loop {
        let attempt = tokio::select! {
            r = tunnel::connect(profile, tls.clone(), left.as_ref()) => r,
            _ = signals.any() => return Ok(()),
        };
        let outcome = match attempt {
            Ok(c) => {
                failures = 0;
                backoff = profile.retry_initial;
                left = Some(c.remote.clone());
                match session(c, profile, host, signals).await? {
                    None => return Ok(()),
                    Some(Err(e)) if !once && e.downcast_ref::<tunnel::Moved>().is_some() => {
                        // At once: the endpoint asked for it and another
                        // gateway is there.
                        eprintln!("cvpn-client: {e}; reconnecting to another gateway");
                        continue;
                    }
                    Some(Ok(reason)) => {
                        eprintln!("cvpn-client: disconnected: {reason}");
                        if once {
                            return Ok(());
                        }
                        // Not at once: an endpoint that is restarting
                        // needs a moment, and many clients must not
                        // stampede it.
                        eprintln!("cvpn-client: reconnecting in {}s", backoff.as_secs());
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = signals.any() => return Ok(()),
                        }
                        continue;
                    }
                    Some(Err(e)) if !once && profile.remotes.len() > 1 => {
                        // The gateway is gone: another may be there
                        // already (the lost one is tried last).
                        eprintln!("cvpn-client: {e:#}; trying the other gateways");
                        continue;
                    }
                    Some(Err(e)) => e,
                }
            }
            Err(e) => e,
        };
        if once {
            return Err(outcome);
        }
        failures += 1;
        if profile.retry_limit.is_some_and(|max| failures > max) {
            return Err(outcome.context(format!(
                "giving up after {failures} attempts (connect-retry-max)"
            )));
        }
        eprintln!(
            "cvpn-client: {outcome:#}; retrying in {}s",
            backoff.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = signals.any() => return Ok(()),
        }
        backoff = (backoff * 2)
            .min(profile.retry_max)
            .max(Duration::from_secs(1));
    }
}

/// Runs one connection on the host set-up in `host` (made, or remade if
/// the endpoint now pushes something else). None: a signal ended it;
/// Some(result): the connection ended by itself.
async fn session(
    c: Connected,
    profile: &Profile,
    host: &mut Option<HostSetup>,
    signals: &mut Signals,
) -> Result<Option<Result<String>>> {
    let setup = match host.take() {
        Some(h) if h.fits(&c) => h,
        Some(h) => {
            eprintln!("cvpn-client: the endpoint pushed a new configuration; setting up again");
            h.teardown().await;
            HostSetup::apply(&c, profile).await?
        }
        None => HostSetup::apply(&c, profile).await?,
    };
    let setup = host.insert(setup);
    print_status(&c);
    let Connected {
        mut stream,
        config,
        leftover,
        peer: c_peer,
        ..
    } = c;
    let keepalive = Duration::from_secs(u64::from(config.keepalive_secs.max(1)));
    let datagram = match config.datagram {
        Some(offer) => match Channel::open(c_peer, offer).await {
            Ok(ch) => Some(ch),
            Err(e) => {
                eprintln!("cvpn-client: no datagram channel ({e:#}); using the TLS stream only");
                None
            }
        },
        None => None,
    };
    // Routes the endpoint changes while connected (after a reload), and
    // client route enforcement: on every change of the routing table
    // (netlink) and at least every second.
    let (routes_tx, mut routes_rx) = tokio::sync::watch::channel(None);
    let (tun, mut editor) = setup.split();
    let route_work = async {
        let (_watch, mut changes) = match Netlink::watch() {
            Ok((nl, stream)) => (Some(nl), Some(stream)),
            Err(e) => {
                eprintln!(
                    "cvpn-client: not watching the routing table ({e}); checking every second"
                );
                (None, None)
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut updates_open = true;
        loop {
            tokio::select! {
                r = routes_rx.changed(), if updates_open => {
                    updates_open = r.is_ok();
                    let new = routes_rx.borrow_and_update().clone();
                    if let Some(routes) = new {
                        match editor.apply(routes).await {
                            Ok(()) => eprintln!("cvpn-client: the endpoint changed its routes; routes updated"),
                            Err(e) => eprintln!("cvpn-client: cannot apply the endpoint's new routes: {e:#}"),
                        }
                    }
                }
                _ = next_change(&mut changes) => {}
                _ = tick.tick() => {}
            }
            match editor.enforce().await {
                Ok(done) => {
                    for d in done {
                        eprintln!("cvpn-client: route enforcement: {d}");
                    }
                }
                Err(e) => tracing::debug!("route enforcement: {e:#}"),
            }
        }
    };
    let outcome = tokio::select! {
        r = tunnel::run(&mut stream, leftover, tun, keepalive, datagram.as_ref(), &routes_tx) => Some(r),
        () = route_work => None,
        _ = signals.any() => None,
    };
    if outcome.is_none() {
        tunnel::say_goodbye(&mut stream, "client exiting").await;
    }
    Ok(outcome)
}

/// Resolves on the next routing table change, never without a watch.
async fn next_change<S: futures::Stream + Unpin>(changes: &mut Option<S>) {
    use futures::StreamExt;
    match changes {
        Some(s) => {
            if s.next().await.is_none() {
                *changes = None;
            }
        }
        None => std::future::pending().await,
    }
}

fn print_status(c: &Connected) {
    let cfg = &c.config;
    let routes = if cfg.full_tunnel {
        "0.0.0.0/1, 128.0.0.0/1 (full tunnel)".to_string()
    } else if cfg.routes.is_empty() {
        "(none)".to_string()
    } else {
        cfg.routes
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dns = if cfg.dns_servers.is_empty() {
        "(unchanged)".to_string()
    } else {
        cfg.dns_servers
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("cvpn-client: connected to {} ({})", c.peer, c.server_name);
    println!("  connection  {}", cfg.connection_id);
    println!(
        "  address     {}/{} on {}",
        cfg.address,
        cfg.prefix_len,
        tunnel::TUN_NAME
    );
    println!("  routes      {routes}");
    if !cfg.client_networks.is_empty() {
        let carried: Vec<String> = cfg.client_networks.iter().map(|n| n.to_string()).collect();
        println!(
            "  carries     {} (a site: routed to this client)",
            carried.join(", ")
        );
    }
    println!("  dns         {dns}");
    println!("  expires in  {}s", cfg.session_expires_in_secs);
    if let Some(b) = &cfg.banner {
        println!("{b}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
