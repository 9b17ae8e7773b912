//! `cvpn-gw serve`: sets up the host, accepts clients, and undoes the set-up
//! on exit.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use arc_swap::ArcSwap;
use cvpn_gw::config::{Config, TransportProtocol};
use cvpn_gw::connlog::{ConnLog, Event, Record};
use cvpn_gw::dataplane::{Drops, Registry};
use cvpn_gw::handshakes::{FailureTally, SourceRate};
use cvpn_gw::lease::{self, Leases};
use cvpn_gw::metrics::Tally;
use cvpn_gw::netsetup::{self, nft};
use cvpn_gw::policy::Policy;
use cvpn_gw::pool::Pool;
use cvpn_gw::tls;
use cvpn_proto::Control;
use cvpn_proto::text::untrusted;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::session::TUNNEL_MTU;
use crate::{control, datapath, listener, metrics_http};

pub const TUN_NAME: &str = "cvpn-gw0";
/// Packets the kernel may queue for the gateway to read from its tun device.
const TUN_QUEUE_LEN: u32 = 10_000;

pub struct Gateway {
    pub config: Config,
    pub policy: ArcSwap<Policy>,
    pub tls: ArcSwap<tls::Acceptor>,
    pub registry: Registry,
    /// The pool and the lease table (sticky addresses).
    pub leases: Mutex<Leases>,
    /// Held while a client is admitted: the per-identity and endpoint
    /// limits are checked and the address assigned as one step.
    pub admission: tokio::sync::Mutex<()>,
    /// Handshakes in progress (bounded).
    pub handshakes: Arc<tokio::sync::Semaphore>,
    /// New handshakes per source address (bounded rate).
    pub source_rate: Mutex<SourceRate>,
    /// Failed attempts without a certificate, until logged.
    pub failures: Mutex<FailureTally>,
    pub tun: datapath::Tun,
    /// The datagram channel's socket (transport_protocol = "udp"),
    /// non-blocking, read by the packet thread.
    pub udp: Option<std::net::UdpSocket>,
    pub connlog: Option<ConnLog>,
    pub gateway_addr: Ipv4Addr,
    pub drops: Drops,
    pub tally: Tally,
}

impl Gateway {
    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Addresses free in the pool.
    pub fn free_addresses(&self) -> u32 {
        self.leases().free()
    }

    /// Admits `common_name`: ends its oldest sessions beyond
    /// `max_sessions_per_identity - 1` (each told why), checks
    /// `max_connections`, and assigns its sticky address. Err: why the
    /// client is refused. The caller inserts the session before dropping
    /// the guard returned.
    pub async fn admit(
        &self,
        common_name: &str,
    ) -> Result<(Ipv4Addr, tokio::sync::MutexGuard<'_, ()>), String> {
        let guard = self.admission.lock().await;
        let mut same: Vec<_> = self
            .registry
            .all()
            .into_iter()
            .filter(|s| s.common_name == common_name)
            .collect();
        same.sort_by_key(|s| s.started);
        let keep = self.config.max_sessions_per_identity as usize - 1;
        let replaced: Vec<_> = same.iter().take(same.len().saturating_sub(keep)).collect();
        for s in &replaced {
            info!(connection_id = %s.connection_id, common_name = %untrusted(common_name),
                  "replaced by a new session of the same identity");
            s.terminate("replaced by a new session of the same identity");
        }
        // Their addresses go back to the pool as they end (at once: the
        // session tasks only close their outboxes first).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            // Under the lease lock, as `end_session` unregisters and
            // releases: gone from the registry means back in the pool.
            let leases = self.leases();
            let gone = !replaced.iter().any(|s| {
                self.registry
                    .get(s.address)
                    .is_some_and(|r| Arc::ptr_eq(&r, s))
            });
            drop(leases);
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let live = self.registry.len();
        if live >= self.config.max_connections as usize {
            return Err(format!(
                "the endpoint is at max_connections ({})",
                self.config.max_connections
            ));
        }
        match self.leases().assign(common_name) {
            Some(addr) => Ok((addr, guard)),
            None => Err("no free address in client_cidr".into()),
        }
    }

    /// Unregisters a session and returns its address to the pool (its
    /// lease stays), as one step.
    pub fn end_session(&self, addr: Ipv4Addr) {
        let mut leases = self.leases();
        self.registry.remove(addr);
        leases.release(addr);
    }

    /// Counts a failed attempt that presented no certificate; it is
    /// logged with the others from its source at the next flush.
    pub fn failed_without_certificate(&self, device: SocketAddr, reason: &str) {
        self.tally.count_failed();
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).add(
            device,
            reason,
            time::OffsetDateTime::now_utc(),
        );
    }

    /// Logs the failed attempts counted since the last flush.
    pub fn flush_failures(&self) {
        let records = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(listener::FAILURE_INTERVAL.as_secs());
        for r in records {
            if let Event::Failed { reason } = &r.event {
                warn!(device_ip = %r.device.ip(), reason = %untrusted(reason), "connection attempts refused");
            }
            if let Some(l) = &self.connlog {
                l.write(&r);
            }
        }
    }

    pub fn log(&self, record: &Record) {
        self.tally.count(&record.event);
        if let Some(l) = &self.connlog {
            l.write(record);
        }
    }

    /// Logs a refused attempt and tells the client why.
    pub async fn refuse<W: AsyncWrite + Unpin>(&self, wr: &mut W, record: Record) {
        if let Event::Failed { reason } = &record.event {
            let cn = record.common_name.as_deref().unwrap_or("NA");
            warn!(device_ip = %record.device, common_name = %untrusted(cn),
                  reason = %untrusted(reason), "connection refused");
            let mut buf = bytes::BytesMut::new();
            let _ = cvpn_proto::encode_control(
                &mut buf,
                &Control::Disconnect {
                    reason: reason.clone(),
                },
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                wr.write_all(&buf).await?;
                wr.shutdown().await
            })
            .await;
        }
        self.log(&record);
    }
}

/// Everything `serve` changed on the host, undone in `teardown`.
struct HostState {
    applied: Option<netsetup::Applied>,
    control_socket: PathBuf,
}

impl HostState {
    fn teardown(&mut self) {
        if let Some(a) = self.applied.take()
            && let Err(e) = a.undo()
        {
            warn!(error = %e, "could not undo the network set-up");
        }
        let _ = std::fs::remove_file(&self.control_socket);
    }
}

impl Drop for HostState {
    fn drop(&mut self) {
        self.teardown();
    }
}

pub async fn serve(config: Config) -> Result<()> {
    // Registered first, so a signal during start-up still gets a clean exit.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let policy = Policy::compile(&config).context("authorization_rules")?;
    // Each client is a socket: thousands of them need more than the usual
    // soft limit of 1024 descriptors.
    if let Ok(n) = rlimit::increase_nofile_limit(u64::MAX) {
        info!(max_open_files = n, "file descriptor limit");
    }
    let tls_config = tls::Acceptor::new(&config.tls)?;
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
    let _ = std::fs::remove_file(&config.control_socket);
    let enis = netsetup::eni_addresses(&config.target_networks).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", config.listen))?;
    let udp = match config.transport_protocol {
        TransportProtocol::Udp => {
            let sock = std::net::UdpSocket::bind(config.listen)
                .with_context(|| format!("listen: cannot bind {} for UDP", config.listen))?;
            sock.set_nonblocking(true)?;
            crate::udp::want_local_address(&sock)
                .with_context(|| format!("listen: IP_PKTINFO on {}", config.listen))?;
            Some(sock)
        }
        TransportProtocol::Tcp => None,
    };
    let connlog = match &config.connection_log {
        Some(p) => {
            Some(ConnLog::open(p).with_context(|| format!("connection_log: {}", p.display()))?)
        }
        None => None,
    };
    let leases = restore_leases(&config.state_dir, Pool::new(config.client_cidr));
    let gateway_addr = leases.gateway_address();
    let netmask = ipnet::Ipv4Net::new(gateway_addr, config.client_cidr.prefix_len())?.netmask();
    let tun = datapath::Tun::create(TUN_NAME, gateway_addr, netmask, TUNNEL_MTU, udp.is_some())?;
    netsetup::set_txqueuelen(TUN_NAME, TUN_QUEUE_LEN).await?;
    // The tunnel carries IPv4 only: no IPv6 link-local chatter into it.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{TUN_NAME}/disable_ipv6"),
        "1",
    );

    let mut host = HostState {
        applied: None,
        control_socket: config.control_socket.clone(),
    };
    let targets: Vec<nft::NatTarget> = config
        .target_networks
        .iter()
        .zip(&enis)
        .map(|(t, eni)| nft::NatTarget {
            interface: t.interface.clone(),
            eni_address: *eni,
            snat: t.snat,
        })
        .collect();
    host.applied = Some(netsetup::apply(|before| {
        nft::ruleset(
            TUN_NAME,
            config.client_cidr,
            &targets,
            &config.dns_servers,
            before,
            std::process::id(),
        )
    })?);

    let gw = Arc::new(Gateway {
        policy: ArcSwap::from_pointee(policy),
        tls: ArcSwap::from_pointee(tls_config),
        registry: Registry::default(),
        leases: Mutex::new(leases),
        admission: tokio::sync::Mutex::new(()),
        handshakes: Arc::new(tokio::sync::Semaphore::new(
            listener::MAX_HANDSHAKES_IN_PROGRESS,
        )),
        source_rate: Mutex::new(SourceRate::new(config.handshake_rate_per_source)),
        failures: Mutex::new(FailureTally::default()),
        tun,
        udp,
        connlog,
        gateway_addr,
        drops: Drops::default(),
        tally: Tally::default(),
        config,
    });
    let control = control::listen(gw.clone()).await?;
    let metrics = match gw.config.metrics_listen {
        Some(addr) => Some(metrics_http::listen(gw.clone(), addr).await?),
        None => None,
    };
    info!(listen = %gw.config.listen, client_cidr = %gw.config.client_cidr, tun = TUN_NAME,
          eni = ?enis, "endpoint up");

    let mut tasks = tokio::task::JoinSet::new();
    let stop_packets = Arc::new(std::sync::atomic::AtomicBool::new(false));
    datapath::start(&gw, &mut tasks, stop_packets.clone());
    tasks.spawn(crl_watcher(gw.clone()));
    tasks.spawn(lease_saver(gw.clone()));
    // Kept apart: on shutdown it stops first, so no client is admitted
    // while the others are being told to leave.
    let acceptor = tokio::spawn(listener::accept_loop(gw.clone(), listener));
    tasks.spawn(listener::failure_logger(gw.clone()));
    tasks.spawn(control);
    if let Some(m) = metrics {
        info!(metrics_listen = ?gw.config.metrics_listen, "metrics at /metrics");
        tasks.spawn(m);
    }

    let outcome = tokio::select! {
        _ = term.recv() => { info!("SIGTERM: shutting down"); Ok(()) }
        _ = int.recv() => { info!("SIGINT: shutting down"); Ok(()) }
        r = tasks.join_next() => match r {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(anyhow!("a gateway task failed: {e}")),
            _ => Err(anyhow!("a gateway task stopped")),
        },
    };
    acceptor.abort();
    let _ = acceptor.await;
    for s in gw.registry.all() {
        s.terminate("endpoint shutting down");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !gw.registry.all().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_packets.store(true, std::sync::atomic::Ordering::Relaxed);
    tasks.abort_all();
    save_leases(&gw);
    gw.flush_failures();
    host.teardown();
    info!("endpoint down; host set-up removed");
    outcome
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Re-reads the CRL when its file changes: new handshakes use it at once,
/// and sessions of newly revoked certificates end.
async fn crl_watcher(gw: Arc<Gateway>) -> Result<()> {
    let Some(path) = gw.config.tls.crl.clone() else {
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
        match tls::Acceptor::new(&gw.config.tls) {
            Ok(c) => gw.tls.store(Arc::new(c)),
            Err(e) => {
                warn!(error = %e, "CRL changed but cannot be used; keeping the previous one");
                continue;
            }
        }
        let revoked = match tls::load_crl(&path).map(|der| cvpn_pki::crl_serials(&der)) {
            Ok(Ok(s)) => s,
            _ => continue,
        };
        info!(path = %path.display(), revoked = revoked.len(), "CRL reloaded");
        for s in gw.registry.all() {
            if revoked.contains(&s.serial) {
                info!(connection_id = %s.connection_id, common_name = %untrusted(&s.common_name),
                      "certificate revoked: ending session");
                s.terminate("certificate revoked");
            }
        }
    }
}

/// The lease table kept in `state_dir`; an unreadable one is named and
/// set aside (clients then get new addresses), never fatal.
fn restore_leases(dir: &std::path::Path, pool: Pool) -> Leases {
    let mut leases = Leases::new(pool);
    match lease::load(dir) {
        Ok(None) => {}
        Ok(Some(text)) => match leases.restore(&text) {
            Ok(n) => info!(leases = n, state_dir = %dir.display(), "lease table restored"),
            Err(why) => warn!(
                file = %dir.join(lease::LEASE_FILE).display(), %why,
                "not a lease table: clients get new addresses"
            ),
        },
        Err(e) => warn!(error = %e, "cannot read the lease table: clients get new addresses"),
    }
    leases
}

fn save_leases(gw: &Gateway) {
    let snapshot = gw.leases().take_snapshot();
    if let Some(text) = snapshot
        && let Err(e) = lease::save(&gw.config.state_dir, &text)
    {
        warn!(error = %e, "cannot save the lease table");
    }
}

/// Saves the lease table when it changed, at most twice a second: a
/// restart, even after kill -9, finds every lease older than that.
async fn lease_saver(gw: Arc<Gateway>) -> Result<()> {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let gw = gw.clone();
        let _ = tokio::task::spawn_blocking(move || save_leases(&gw)).await;
    }
}
