//! `cvpn-gw serve`: sets up the host, accepts clients, and undoes the set-up
//! on exit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::config::{Config, TransportProtocol};
use crate::endpoint::admission::restore_leases;
use crate::endpoint::jsonlog::JsonLog;
use crate::endpoint::pool::Pool;
use crate::endpoint::revocation::{Source, Taken};
use crate::endpoint::threads::{DataThreads, thread_count};
use crate::endpoint::{Endpoint, TUNNEL_MTU};
use crate::inside::{self, Tun};
use crate::netsetup::{self, nft};
use crate::outside::openvpn::Clients;
use crate::outside::openvpn::udp::UdpServer;
use crate::outside::udp::{self, Datagrams, Udp};
use crate::outside::{Outside, tcp};
use crate::packet_thread::Lane;
use crate::policy::Policy;
use crate::protocol::openvpn::tls_crypt::{StaticKey, TlsCrypt};
use crate::{control, metrics_http, packet_thread, tls};

/// The gateway's tun device.
pub const TUN_NAME: &str = "cvpn-gw0";
/// Packets the kernel may queue for the gateway to read from its tun device.
const TUN_QUEUE_LEN: u32 = 10_000;

/// Everything `serve` changed on the host, undone in `teardown`.
struct HostState {
    applied: Option<netsetup::Applied>,
    /// Aliased networks' routing rules and tables were added.
    aliases: bool,
    control_socket: PathBuf,
}

impl HostState {
    fn teardown(&mut self) {
        if let Some(a) = self.applied.take()
            && let Err(e) = a.undo()
        {
            warn!(error = %e, "could not undo the network set-up");
        }
        if std::mem::take(&mut self.aliases)
            && let Err(e) = netsetup::aliases::clear()
        {
            warn!(error = %e, "could not remove the aliased networks' routing");
        }
        let _ = std::fs::remove_file(&self.control_socket);
    }
}

impl Drop for HostState {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The client networks as the nftables table needs them.
fn site_networks(c: &Config) -> Vec<nft::SiteNetwork> {
    c.client_networks
        .iter()
        .map(|n| nft::SiteNetwork {
            cidr: n.cidr,
            reachable_from: n
                .reachable_from
                .iter()
                .map(|&t| {
                    let t = &c.target_networks[t];
                    (t.interface.clone(), t.vpc_cidr)
                })
                .collect(),
        })
        .collect()
}

fn site_cidrs(c: &Config) -> Vec<ipnet::Ipv4Net> {
    c.client_networks.iter().map(|n| n.cidr).collect()
}

pub async fn serve(config: Config, source: Option<PathBuf>) -> Result<()> {
    // Registered first, so a signal during start-up still gets a clean exit.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let policy = Policy::compile(&config).context("authorization_rules")?;
    // Each client is a socket: thousands of them need more than the usual
    // soft limit of 1024 descriptors.
    if let Ok(n) = rlimit::increase_nofile_limit(u64::MAX) {
        info!(max_open_files = n, "file descriptor limit");
    }
    let tls_config = tls::Acceptor::new(&config.tls)?;
    let tls_crypt = match &config.tls.tls_crypt {
        Some(path) => Some(StaticKey::load(path)?),
        None => None,
    };
    // An expired CRL only warns: re-signing it fixes that while the
    // endpoint runs (the CRL is re-read when it changes).
    match tls::check_crl(&config.tls)? {
        tls::CrlHealth::Current => {}
        health => warn!("WARNING: {health}"),
    }
    // Before anything on the host is touched: a second gateway in this
    // network namespace would take the first one's table and forwarding.
    let _instance = netsetup::lock_instance(std::path::Path::new(netsetup::LOCK_DIR))?;
    if netsetup::clear_stale()? {
        info!("removed the nftables table left by a previous run");
    }
    let _state = netsetup::lock_state_dir(&config.state_dir)?;
    let _ = std::fs::remove_file(&config.control_socket);
    let enis = netsetup::eni_addresses(&config.target_networks).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", config.listen))?;
    let threads = thread_count(config.data_threads);
    let lanes: Vec<Lane> = match config.transport_protocol {
        TransportProtocol::Udp => udp::bind_group(config.listen, threads)
            .with_context(|| {
                format!(
                    "listen: cannot bind {} for UDP ({threads} sockets)",
                    config.listen
                )
            })?
            .into_iter()
            .enumerate()
            .map(|(index, socket)| Lane {
                index,
                socket: Some(socket),
            })
            .collect(),
        TransportProtocol::Tcp => (0..threads)
            .map(|index| Lane {
                index,
                socket: None,
            })
            .collect(),
    };
    let connlog = match &config.connection_log {
        Some(p) => {
            Some(Arc::new(JsonLog::open(p).with_context(|| {
                format!("connection_log: {}", p.display())
            })?))
        }
        None => None,
    };
    let leases = restore_leases(&config.state_dir, Pool::new(config.client_cidr));
    let gateway_addr = leases.gateway_address();
    let netmask = ipnet::Ipv4Net::new(gateway_addr, config.client_cidr.prefix_len())?.netmask();
    let tun = Arc::new(Tun::create(
        TUN_NAME,
        gateway_addr,
        netmask,
        TUNNEL_MTU,
        lanes.len(),
    )?);
    netsetup::set_txqueuelen(TUN_NAME, TUN_QUEUE_LEN).await?;
    // The tunnel carries IPv4 only: no IPv6 link-local chatter into it.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{TUN_NAME}/disable_ipv6"),
        "1",
    );

    let mut host = HostState {
        applied: None,
        aliases: false,
        control_socket: config.control_socket.clone(),
    };
    let targets: Vec<nft::NatTarget> = config
        .target_networks
        .iter()
        .zip(&enis)
        .enumerate()
        .map(|(i, (t, eni))| nft::NatTarget {
            interface: t.interface.clone(),
            eni_address: *eni,
            snat: t.snat,
            alias: t.alias_cidr.map(|a| nft::Alias::new(a, t.vpc_cidr, i)),
        })
        .collect();
    host.aliases = targets.iter().any(|t| t.alias.is_some());
    netsetup::aliases::apply(&targets).map_err(netsetup::SetupError::from)?;
    let table = move |c: &Config, owner: &nft::TableOwner| {
        nft::ruleset(
            TUN_NAME,
            c.client_cidr,
            &targets,
            &site_networks(c),
            &c.dns_servers,
            owner,
        )
    };
    host.applied = Some(netsetup::apply(config.flow_log.is_some(), |owner| {
        table(&config, owner)
    })?);
    let owner = host
        .applied
        .as_ref()
        .map(|a| a.owner().clone())
        .unwrap_or_default();
    netsetup::sites::sync(TUN_NAME, &site_cidrs(&config)).map_err(netsetup::SetupError::from)?;
    // Subscribed before the first client connects: no flow goes unlogged.
    let flows = match &config.flow_log {
        Some(p) => {
            let log = JsonLog::open(p).with_context(|| format!("flow_log: {}", p.display()))?;
            let log = Arc::new(log);
            let socket = netsetup::conntrack::subscribe()
                .context("flow_log: cannot subscribe to conntrack events")?;
            Some((socket, log))
        }
        None => None,
    };

    let ep = Arc::new(Endpoint::new(
        config,
        source,
        policy,
        tls_config,
        leases,
        connlog,
        Box::new(inside::Device(tun.clone())),
    ));
    ep.set_host_setup(Box::new(move |c: &Config| {
        nft::install(&table(c, &owner)).map_err(|e| e.to_string())?;
        netsetup::sites::sync(TUN_NAME, &site_cidrs(c)).map_err(|e| e.to_string())
    }));
    let openvpn = Arc::new(Clients::new(tls_crypt.as_ref().map(TlsCrypt::server)));
    let _ = ep.data_threads.set(DataThreads::new(lanes.len()));
    let udp = match lanes.first().and_then(|l| l.socket.as_ref()) {
        Some(first) => {
            let socket = Arc::new(first.try_clone()?);
            let server = UdpServer::new(
                ep.clone(),
                openvpn.clone(),
                socket.clone(),
                tokio::runtime::Handle::current(),
            )
            .context("no system randomness for the OpenVPN cookie key")?;
            let udp = Arc::new(Udp {
                socket,
                cvpn: Datagrams::default(),
                openvpn: Arc::new(server),
            });
            Some(udp)
        }
        None => None,
    };
    let out = Outside {
        ep: ep.clone(),
        udp: udp.clone(),
        openvpn,
    };
    if let Some((socket, log)) = flows {
        ep.keep_log(log.clone());
        let ep = ep.clone();
        std::thread::Builder::new()
            .name("flow-log".into())
            .spawn(move || netsetup::conntrack::run(socket, ep, log))?;
    }
    let control = control::listen(ep.clone()).await?;
    let metrics = match ep.config().metrics_listen {
        Some(addr) => Some(metrics_http::listen(ep.clone(), addr).await?),
        None => None,
    };
    info!(listen = %ep.config().listen, client_cidr = %ep.config().client_cidr, tun = TUN_NAME,
          eni = ?enis, "endpoint up");

    if let Some(path) = ep.config().tls.crl.clone() {
        let der = tls::load_crl(&path)?;
        ep.take_crl(der.as_ref(), Source::File)
            .map_err(|why| anyhow!("tls.crl: {}: {why}", path.display()))?;
    }
    let registry = crate::cluster::start(ep.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let stop_packets = Arc::new(std::sync::atomic::AtomicBool::new(false));
    info!(
        data_threads = lanes.len(),
        udp = udp.is_some(),
        "a tun queue per lane"
    );
    for lane in lanes {
        let (ep, tun, stop) = (ep.clone(), tun.clone(), stop_packets.clone());
        match &udp {
            Some(udp) => {
                let udp = udp.clone();
                tasks.spawn_blocking(move || packet_thread::run(ep, tun, udp, lane, stop));
            }
            None => {
                tasks.spawn(inside::queue_reader(ep, tun, lane.index));
            }
        }
    }
    tasks.spawn(crl_watcher(ep.clone()));
    tasks.spawn(lease_saver(ep.clone()));
    // Kept apart: on shutdown it stops first, so no client is admitted
    // while the others are being told to leave.
    let acceptor = tokio::spawn(tcp::accept_loop(out, listener));
    tasks.spawn(tcp::failure_logger(ep.clone()));
    tasks.spawn(control);
    if let Some(m) = metrics {
        info!(metrics_listen = ?ep.config().metrics_listen, "metrics at /metrics");
        tasks.spawn(m);
    }

    let outcome = loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break Ok(()) }
            _ = int.recv() => { info!("SIGINT: shutting down"); break Ok(()) }
            _ = ep.drained() => { info!("drained: shutting down"); break Ok(()) }
            _ = hup.recv() => {
                // Logged and counted by reload itself.
                let ep = ep.clone();
                let _ = tokio::task::spawn_blocking(move || ep.reload()).await;
            }
            _ = usr1.recv() => {
                // Logged by reopen_logs itself.
                let ep = ep.clone();
                let _ = tokio::task::spawn_blocking(move || ep.reopen_logs()).await;
            }
            r = tasks.join_next() => break match r {
                Some(Ok(Err(e))) => Err(e),
                Some(Err(e)) => Err(anyhow!("a gateway task failed: {e}")),
                _ => Err(anyhow!("a gateway task stopped")),
            },
        }
    };
    acceptor.abort();
    let _ = acceptor.await;
    for s in ep.sessions.all() {
        s.terminate("endpoint shutting down");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !ep.sessions.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some((stop, task)) = registry {
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    stop_packets.store(true, std::sync::atomic::Ordering::Relaxed);
    tasks.abort_all();
    ep.save_leases();
    ep.flush_failures();
    host.teardown();
    info!("endpoint down; host set-up removed");
    outcome
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Re-reads the CRL when its file changes: new handshakes use it at once,
/// sessions of newly revoked certificates end, and a cluster's other
/// nodes get it.
async fn crl_watcher(ep: Arc<Endpoint>) -> Result<()> {
    let Some(path) = ep.config().tls.crl.clone() else {
        return std::future::pending().await;
    };
    let mut seen = mtime(&path);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = mtime(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let taken = tls::load_crl(&path)
            .map_err(|e| e.to_string())
            .and_then(|der| ep.take_crl(der.as_ref(), Source::File));
        match taken {
            Ok(Taken::Newer(ended)) => {
                info!(path = %path.display(), ended, "CRL reloaded");
                crate::cluster::publish_crl(&ep).await;
            }
            Ok(Taken::NotNewer) => warn!(
                path = %path.display(),
                "CRL changed but is older than the one in force (the cluster's); keeping that one"
            ),
            Err(e) => warn!(error = %e, "CRL changed but cannot be used; keeping the previous one"),
        }
    }
}

/// Saves the lease table when it changed, at most twice a second: a
/// restart, even after kill -9, finds every lease older than that.
async fn lease_saver(ep: Arc<Endpoint>) -> Result<()> {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ep = ep.clone();
        let _ = tokio::task::spawn_blocking(move || ep.save_leases()).await;
    }
}
