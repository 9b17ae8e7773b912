//! The endpoint core: the pool, the compiled policy, the session registry,
//! the connection log, metrics and drop counters, revocation. Wire
//! protocols plug into it through their shells (`outside`): they admit a
//! client, register a [`session::Session`] with a [`session::Link`], hand
//! each packet from the client to [`Endpoint::forward`], and the core hands
//! packets for the client to the session's link ([`Endpoint::deliver`]).
//! The core does no I/O of its own but the log files: the tun device is
//! behind [`Inside`].

pub mod admission;
pub mod connlog;
pub mod drain;
pub mod flowbudget;
pub mod flowlog;
pub mod forward;
pub mod handshakes;
pub mod inbound;
pub mod jsonlog;
pub mod lease;
pub mod metrics;
pub mod peers;
pub mod pool;
pub mod registry;
pub mod reload;
pub mod revocation;
pub mod session;
pub mod sharded;
pub mod tally;
pub mod threads;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use cvpn_proto::text::untrusted;
use ipnet::Ipv4Net;
use tracing::{info, warn};

use crate::config::Config;
use crate::policy::Policy;
use crate::tls;
use connlog::{Event, Record};
use handshakes::{FailureTally, SourceRate};
use jsonlog::JsonLog;
use lease::Leases;
use peers::OtherNodes;
use registry::Registry;
use tally::{Drops, Tally};

/// Handshakes in progress at once, endpoint-wide: each may buffer up to
/// the handshake buffer's cap for up to the handshake timeout.
pub const MAX_HANDSHAKES_IN_PROGRESS: usize = 1024;
/// How often failed attempts without a certificate are logged, per source.
pub const FAILURE_INTERVAL: Duration = Duration::from_secs(10);
/// The tunnel's MTU, pushed to every client.
pub const TUNNEL_MTU: u16 = 1500;
/// How often each side sends a keepalive on an idle session.
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// A client silent for this long is gone (it sends keepalives every
/// KEEPALIVE).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(35);
/// Why a draining gateway ends its sessions: the clients reconnect to
/// another gateway at once (OpenVPN `RESTART,[N]`, cvpn/1 `reconnect`).
pub const MOVED: &str = "the gateway is draining: reconnect to another gateway";
/// Why a draining gateway refuses a new client (a temporary refusal).
pub const DRAINING: &str = "the gateway is draining (connect to another gateway)";

/// The keepalive in a cluster: a client whose gateway died without a
/// word (kill -9, power) notices within CLUSTER_PING_RESTART and moves
/// to another node.
pub const CLUSTER_KEEPALIVE: Duration = Duration::from_secs(1);
/// How long an OpenVPN client of a cluster waits for a sign of life
/// before it reconnects (pushed `ping-restart`).
pub const CLUSTER_PING_RESTART: Duration = Duration::from_secs(3);

/// The inside of the endpoint: the tun device toward the target networks.
pub trait Inside: Send + Sync {
    /// Writes one packet (virtio-net header and IPv4 packet) toward the
    /// target networks; the kernel forwards it before the call returns.
    fn write(&self, packet: &[u8]) -> std::io::Result<usize>;

    /// Before a session's packets are written from the calling thread:
    /// a packet thread records its own queue in `lane` (the session's),
    /// any other thread writes by `lane`, so the kernel hands the
    /// session's replies to one packet thread. May do nothing.
    fn steer(&self, lane: &std::sync::atomic::AtomicUsize) {
        let _ = lane;
    }

    /// Called after a burst of writes: hands packets for clients that the
    /// kernel has already queued (a nearby host's reply) to `deliver`
    /// without waiting for the reader. May do nothing.
    fn take_replies(&self, deliver: &mut dyn FnMut(&[u8]));
}

/// What every client is told when its session starts, whatever its
/// protocol: its address and the routes, DNS and timers of the endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The client's address.
    pub address: Ipv4Addr,
    /// The client CIDR's prefix length.
    pub prefix_len: u8,
    /// The gateway's own address in the client CIDR.
    pub gateway: Ipv4Addr,
    /// Route-table destinations (split tunnel); empty in full tunnel.
    /// Never the client's own client networks.
    pub routes: Vec<Ipv4Net>,
    /// The client networks this client carries (a site's networks).
    pub client_networks: Vec<Ipv4Net>,
    /// Send everything through the tunnel.
    pub full_tunnel: bool,
    /// DNS servers (at most two).
    pub dns_servers: Vec<Ipv4Addr>,
    /// The tunnel's MTU.
    pub mtu: u16,
    /// Shown to the user after connecting.
    pub banner: Option<String>,
    /// How often each side sends a keepalive.
    pub keepalive: Duration,
    /// When the session ends at the latest.
    pub session_timeout: Duration,
}

/// The endpoint: one per `cvpn-gw serve`.
pub struct Endpoint {
    /// The configuration in force (replaced whole by a reload).
    config: ArcSwap<Config>,
    /// Where the configuration is read from on a reload.
    source: Option<std::path::PathBuf>,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// Bumped when what clients are pushed (routes, DNS, tunnel mode)
    /// changes in a reload.
    routes_generation: std::sync::atomic::AtomicU64,
    /// The compiled route table and authorization rules.
    pub policy: ArcSwap<Policy>,
    /// The TLS server side, replaced when the CRL changes.
    pub tls: ArcSwap<tls::Acceptor>,
    /// Live sessions.
    pub sessions: Registry,
    /// New handshakes per source address (bounded rate).
    pub source_rate: Mutex<SourceRate>,
    /// Handshakes in progress (bounded).
    pub handshakes: Arc<tokio::sync::Semaphore>,
    /// Packets not forwarded, by reason.
    pub drops: Drops,
    /// Flows opened into client networks, which their sites may answer.
    pub inbound: inbound::InboundFlows,
    /// The cluster as this node last saw it (with `[cluster]`).
    pub cluster_state: tally::ClusterState,
    /// Connection attempts and ended sessions' traffic.
    pub tally: Tally,
    /// The gateway's own address in the client CIDR.
    pub gateway_addr: Ipv4Addr,
    leases: Mutex<Leases>,
    admission: admission::AdmissionLocks,
    failures: Mutex<FailureTally>,
    connlog: Option<Arc<JsonLog>>,
    /// Every log file, for `reopen_logs`.
    logs: Mutex<Vec<Arc<JsonLog>>>,
    inside: Box<dyn Inside>,
    /// Brings the host (routes, nftables table) in line with a reloaded
    /// configuration's client networks.
    host: std::sync::OnceLock<HostSetup>,
    /// A cluster's shared leases (None: this gateway's own table alone).
    shared_leases: std::sync::OnceLock<Box<dyn SharedLeases>>,
    /// Told of each session's start (true) and end (false): a cluster
    /// publishes them.
    session_observer: std::sync::OnceLock<SessionObserver>,
    /// A cluster's other nodes (None: a single gateway).
    other_nodes: std::sync::OnceLock<Box<dyn OtherNodes>>,
    /// The CRL in force (None: none taken yet, `tls.crl`'s if any).
    crl: Mutex<Option<revocation::CrlInForce>>,
    /// Set once the gateway drains.
    drain: drain::Drain,
    /// The packet threads' counters (with `transport_protocol = "udp"`).
    pub data_threads: std::sync::OnceLock<threads::DataThreads>,
}

/// Told of a session's start (true) and end (false).
pub type SessionObserver = Box<dyn Fn(&session::Session, bool) + Send + Sync>;

/// The answer to a claim of an address in a cluster's shared leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The address is the identity's (now, or already).
    Claimed,
    /// Another identity holds the address (empty: it changed meanwhile).
    HeldBy(String),
    /// The identity already holds this other address.
    YoursIs(Ipv4Addr),
}

/// A lease table shared by several gateways (a cluster's): admission
/// asks it before giving an identity an address. Errors say why the store
/// could not answer (the client is then refused for now).
pub trait SharedLeases: Send + Sync {
    /// The address the cluster leased to `identity`, if any.
    fn leased<'a>(
        &'a self,
        identity: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Ipv4Addr>, String>>;
    /// Claims `addr` for `identity`, if neither is leased otherwise.
    fn claim<'a>(
        &'a self,
        identity: &'a str,
        addr: Ipv4Addr,
    ) -> futures::future::BoxFuture<'a, Result<Claim, String>>;
}

/// Applies a configuration's client networks to the host; Err: why not
/// (the host is left as it was).
pub type HostSetup = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

impl Endpoint {
    /// The endpoint with `config` (read from `source`, if from a file),
    /// its compiled `policy`, its TLS side, the lease table (restored or
    /// new), the open connection log and the inside it forwards to.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        source: Option<std::path::PathBuf>,
        policy: Policy,
        acceptor: tls::Acceptor,
        leases: Leases,
        connlog: Option<Arc<JsonLog>>,
        inside: Box<dyn Inside>,
    ) -> Endpoint {
        Endpoint {
            policy: ArcSwap::from_pointee(policy),
            tls: ArcSwap::from_pointee(acceptor),
            sessions: Registry::default(),
            source_rate: Mutex::new(SourceRate::new(config.handshake_rate_per_source)),
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES_IN_PROGRESS)),
            drops: Drops::default(),
            inbound: Default::default(),
            cluster_state: Default::default(),
            tally: Tally::default(),
            gateway_addr: leases.gateway_address(),
            leases: Mutex::new(leases),
            admission: Default::default(),
            failures: Mutex::new(FailureTally::default()),
            logs: Mutex::new(connlog.iter().cloned().collect()),
            connlog,
            inside,
            config: ArcSwap::from_pointee(config),
            source,
            reloading: Mutex::new(()),
            routes_generation: Default::default(),
            host: Default::default(),
            shared_leases: Default::default(),
            session_observer: Default::default(),
            other_nodes: Default::default(),
            crl: Default::default(),
            drain: Default::default(),
            data_threads: Default::default(),
        }
    }

    /// Sets who is told of sessions starting and ending (once).
    pub fn set_session_observer(&self, observer: SessionObserver) {
        let _ = self.session_observer.set(observer);
    }

    /// Tells the observer, if any, that `session` started or ended.
    fn observe(&self, session: &session::Session, started: bool) {
        if let Some(o) = self.session_observer.get() {
            o(session, started);
        }
    }

    /// Makes admission claim addresses in a cluster's shared leases (once).
    pub fn set_shared_leases(&self, leases: Box<dyn SharedLeases>) {
        let _ = self.shared_leases.set(leases);
    }

    /// Makes admission and `terminate` reach a cluster's other nodes
    /// (once).
    pub fn set_other_nodes(&self, nodes: Box<dyn OtherNodes>) {
        let _ = self.other_nodes.set(nodes);
    }

    /// The cluster's other nodes, if clustered.
    pub fn other_nodes(&self) -> Option<&dyn OtherNodes> {
        self.other_nodes.get().map(|b| b.as_ref())
    }

    /// Sets how a reload applies new client networks to the host (once).
    pub fn set_host_setup(&self, setup: HostSetup) {
        let _ = self.host.set(setup);
    }

    /// The configuration in force.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The current route generation (see `Session::routes_generation`).
    pub fn routes_generation(&self) -> u64 {
        self.routes_generation
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What a client at `address` with the certificate `common_name` is
    /// told.
    pub fn push_for(&self, address: Ipv4Addr, common_name: &str) -> Push {
        let c = self.config();
        Push {
            address,
            prefix_len: c.client_cidr.prefix_len(),
            gateway: self.gateway_addr,
            routes: c.pushed_routes(common_name),
            client_networks: c
                .client_networks
                .iter()
                .filter(|n| n.common_name == common_name)
                .map(|n| n.cidr)
                .collect(),
            full_tunnel: !c.split_tunnel,
            dns_servers: c.dns_servers.clone(),
            mtu: TUNNEL_MTU,
            banner: c.banner.clone(),
            keepalive: self.keepalive(),
            session_timeout: c.session_timeout,
        }
    }

    /// How often each side sends a keepalive on an idle session: more
    /// often in a cluster, where a client has somewhere to go.
    pub fn keepalive(&self) -> Duration {
        match self.config().cluster {
            Some(_) => CLUSTER_KEEPALIVE,
            None => KEEPALIVE,
        }
    }

    /// How long an OpenVPN client waits for a sign of life before it
    /// reconnects (pushed `ping-restart`).
    pub fn ping_restart(&self) -> Duration {
        match self.config().cluster {
            Some(_) => CLUSTER_PING_RESTART,
            None => IDLE_TIMEOUT,
        }
    }

    /// Writes a record to the connection log and counts it.
    pub fn log(&self, record: &Record) {
        self.tally.count(&record.event);
        if let Some(l) = &self.connlog {
            l.write(&self.log_line(record));
        }
    }

    /// A record's line: its fields, and those of this endpoint (the
    /// client networks a site's sessions carry, the cluster node).
    fn log_line(&self, record: &Record) -> serde_json::Value {
        let mut line = record.to_json();
        let config = self.config();
        let carried: Vec<String> = config
            .client_networks
            .iter()
            .filter(|n| record.common_name.as_deref() == Some(n.common_name.as_str()))
            .map(|n| n.cidr.to_string())
            .collect();
        if let Some(m) = line.as_object_mut() {
            if !carried.is_empty() {
                m.insert("client-networks".into(), carried.join(",").into());
            }
            if let Some(c) = &config.cluster {
                m.insert("node".into(), c.node.clone().into());
            }
        }
        line
    }

    /// Logs a refused attempt of a client that presented a certificate.
    pub fn log_refused(&self, record: &Record) {
        if let Event::Failed { reason } = &record.event {
            let cn = record.common_name.as_deref().unwrap_or("NA");
            warn!(device_ip = %record.device, common_name = %untrusted(cn),
                  reason = %untrusted(reason), "connection refused");
        }
        self.log(record);
    }

    /// Adds a log file that `reopen_logs` reopens (the flow log).
    pub fn keep_log(&self, log: Arc<JsonLog>) {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(log);
    }

    /// Reopens every log file under its name (after logrotate moved it);
    /// returns the paths, or what could not be reopened (those keep
    /// writing to the file they had).
    pub fn reopen_logs(&self) -> Result<Vec<String>, String> {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for log in logs {
            let path = log.path().display().to_string();
            match log.reopen() {
                Ok(()) => done.push(path),
                Err(e) => failed.push(format!("{path}: {e}")),
            }
        }
        if failed.is_empty() {
            info!(logs = ?done, "logs reopened");
            Ok(done)
        } else {
            warn!(failed = ?failed, "logs not reopened");
            Err(failed.join("; "))
        }
    }

    /// Counts a failed attempt that presented no certificate; it is
    /// logged with the others from its source at the next flush.
    pub fn failed_without_certificate(&self, device: SocketAddr, reason: &str) {
        self.tally.count_failed(reason);
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
            .drain(FAILURE_INTERVAL.as_secs());
        for r in records {
            if let Event::Failed { reason } = &r.event {
                warn!(device_ip = %r.device.ip(), reason = %untrusted(reason), "connection attempts refused");
            }
            if let Some(l) = &self.connlog {
                l.write(&self.log_line(&r));
            }
        }
    }

    /// Ends the sessions of certificates whose serial `revoked` lists.
    pub fn end_revoked(&self, revoked: &[String]) -> usize {
        let mut n = 0;
        for s in self.sessions.all() {
            if revoked.contains(&s.serial) {
                info!(connection_id = %s.connection_id, common_name = %untrusted(&s.common_name),
                      "certificate revoked: ending session");
                s.terminate("certificate revoked");
                n += 1;
            }
        }
        n
    }
}
