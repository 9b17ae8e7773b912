//! The endpoint configuration: parsed from TOML and validated as a whole
//! before anything touches the system. Every error names its key.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;

/// The managed service's limits.
pub const MAX_DNS_SERVERS: usize = 2;
pub const MAX_BANNER_CHARS: usize = 1_400;
pub const MIN_CLIENT_PREFIX: u8 = 12;
pub const MAX_CLIENT_PREFIX: u8 = 22;
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/cvpn-gw.sock";
/// Where the lease table and other state kept across restarts live.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cvpn";
/// Sessions of one identity at once (OpenVPN without duplicate-cn).
pub const DEFAULT_MAX_SESSIONS_PER_IDENTITY: u32 = 1;
/// New handshakes per second from one source address.
pub const DEFAULT_HANDSHAKE_RATE_PER_SOURCE: u32 = 20;
/// Sessions of the endpoint at once.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// OpenVPN's reneg-sec default: keys are renegotiated hourly.
pub const DEFAULT_RENEG: Duration = Duration::from_secs(3600);
/// Packet threads at most (`data_threads`): the tun device's queue limit.
pub const MAX_DATA_THREADS: i64 = 256;
/// The longest `[tls] reneg_seconds` (a week).
pub const MAX_RENEG_SECONDS: i64 = 7 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    client_cidr: Ipv4Net,
    #[serde(default = "yes")]
    split_tunnel: bool,
    #[serde(default)]
    dns_servers: Vec<Ipv4Addr>,
    session_timeout: Option<String>,
    banner: Option<String>,
    control_socket: Option<PathBuf>,
    connection_log: Option<PathBuf>,
    flow_log: Option<PathBuf>,
    flow_log_rate: Option<i64>,
    metrics_listen: Option<SocketAddr>,
    transport_protocol: Option<String>,
    data_threads: Option<i64>,
    state_dir: Option<PathBuf>,
    max_sessions_per_identity: Option<i64>,
    max_connections: Option<i64>,
    handshake_rate_per_source: Option<i64>,
    tls: RawTls,
    #[serde(default)]
    target_networks: Vec<RawTarget>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    authorization_rules: Vec<RawRule>,
    #[serde(default)]
    client_networks: Vec<RawClientNetwork>,
    cluster: Option<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    node: String,
    etcd: Vec<String>,
    advertise: String,
    prefix: Option<String>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    crl: Option<PathBuf>,
    tls_crypt: Option<PathBuf>,
    min_version: Option<String>,
    reneg_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    id: String,
    interface: String,
    eni_address: Option<Ipv4Addr>,
    vpc_cidr: Ipv4Net,
    #[serde(default = "yes")]
    snat: bool,
    alias_cidr: Option<Ipv4Net>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientNetwork {
    common_name: String,
    cidr: Ipv4Net,
    #[serde(default)]
    reachable_from: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    destination: Ipv4Net,
    target: String,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    destination: Ipv4Net,
    access_group: Option<String>,
    all_users: Option<bool>,
    description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub crl: Option<PathBuf>,
    /// OpenVPN tls-crypt key (optional): OpenVPN packets without it get
    /// no answer.
    pub tls_crypt: Option<PathBuf>,
    /// The oldest TLS version OpenVPN clients may use (cvpn/1 is always
    /// TLS 1.3).
    pub min_version: TlsVersion,
    /// OpenVPN clients' keys are renegotiated by the endpoint after this
    /// (OpenVPN's reneg-sec); zero: only when a key wears out.
    pub reneg: Duration,
}

/// A TLS protocol version the endpoint may take from OpenVPN clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2 (with extended master secret) and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetNetwork {
    pub id: String,
    pub interface: String,
    /// None: the interface's primary IPv4 address, looked up at start.
    pub eni_address: Option<Ipv4Addr>,
    pub vpc_cidr: Ipv4Net,
    pub snat: bool,
    /// Clients reach the network under this prefix (same length as
    /// `vpc_cidr`, same host part); its real addresses may then overlap
    /// other networks'.
    pub alias_cidr: Option<Ipv4Net>,
}

impl TargetNetwork {
    /// The prefix clients reach the network under: its alias, or its
    /// `vpc_cidr`.
    pub fn client_view(&self) -> Ipv4Net {
        self.alias_cidr.unwrap_or(self.vpc_cidr)
    }
}

/// `[cluster]`: this gateway is one node of an endpoint whose shared
/// state is in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// This gateway's name, unique in the cluster.
    pub node: String,
    /// The etcd members' client URLs.
    pub etcd: Vec<String>,
    /// How clients reach this node (`HOST:PORT`).
    pub advertise: String,
    /// Every key of this endpoint starts with it.
    pub prefix: String,
    /// TLS to etcd: the CA that signed the members' certificates.
    pub etcd_ca: Option<PathBuf>,
    /// TLS to etcd: this node's client certificate and key.
    pub etcd_identity: Option<(PathBuf, PathBuf)>,
}

/// The default key prefix of a cluster.
pub const DEFAULT_CLUSTER_PREFIX: &str = "/cvpn/";

/// A network behind one client (a site; OpenVPN's iroute): routed to the
/// session of its certificate, which may send from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientNetwork {
    /// The certificate whose session carries the network.
    pub common_name: String,
    pub cidr: Ipv4Net,
    /// Indices into `Config::target_networks` whose hosts may open
    /// connections into the network (routed, not translated).
    pub reachable_from: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Index into `Config::target_networks`.
    Network(usize),
    /// Client-to-client: delivered inside the gateway.
    Local,
    /// Index into `Config::client_networks`: delivered to the session
    /// that carries it.
    ClientNetwork(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Associate,
    AddRoute,
    /// A `[[client_networks]]` entry.
    ClientNetwork,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Associate => "associate",
            Origin::AddRoute => "add-route",
            Origin::ClientNetwork => "client-network",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Net,
    pub target: RouteTarget,
    pub origin: Origin,
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub destination: Ipv4Net,
    /// None: every user.
    pub access_group: Option<String>,
    pub description: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportProtocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub client_cidr: Ipv4Net,
    pub split_tunnel: bool,
    pub dns_servers: Vec<Ipv4Addr>,
    pub session_timeout: Duration,
    pub banner: Option<String>,
    pub control_socket: PathBuf,
    pub connection_log: Option<PathBuf>,
    /// One line per forwarded flow's start and end (conntrack events).
    pub flow_log: Option<PathBuf>,
    /// Flow-start lines per session per second (bursts of four times
    /// that); the rest go into the session's flow-summary lines.
    pub flow_log_rate: u32,
    pub metrics_listen: Option<SocketAddr>,
    /// `udp`: clients whose profile says `proto udp` also get the datagram
    /// channel on the same port number over UDP.
    pub transport_protocol: TransportProtocol,
    /// Packet threads with `transport_protocol = "udp"`, each with a tun
    /// queue and a UDP socket of its own (0: one per core).
    pub data_threads: usize,
    /// The lease table (sticky addresses) and other state kept across
    /// restarts.
    pub state_dir: PathBuf,
    /// Sessions of one certificate identity at once; a new one replaces
    /// the oldest.
    pub max_sessions_per_identity: u32,
    /// Sessions of the endpoint at once; over it new clients are refused.
    pub max_connections: u32,
    /// New TLS handshakes per second from one source address (bursts of
    /// twice that); over it, connections are closed before any TLS work.
    pub handshake_rate_per_source: u32,
    pub tls: TlsFiles,
    pub target_networks: Vec<TargetNetwork>,
    /// Networks behind clients (sites).
    pub client_networks: Vec<ClientNetwork>,
    /// One endpoint on several gateways (None: this gateway alone).
    pub cluster: Option<Cluster>,
    /// The digest of each policy key of the file (node-local keys left
    /// out): what a cluster's nodes compare.
    pub policy_keys: std::collections::BTreeMap<String, String>,
    /// The effective route table: `associate` routes first, then the
    /// client networks', then the file's.
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
}

/// All problems found in one file, each with its key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<(String, String)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: invalid configuration", self.file.display())?;
        for (key, why) in &self.problems {
            if key.is_empty() {
                write!(f, "\n  {why}")?;
            } else {
                write!(f, "\n  {key}: {why}")?;
            }
        }
        Ok(())
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![(String::new(), e.to_string())],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|problems| ConfigError {
            file: path.to_path_buf(),
            problems,
        })
    }

    /// Parses and validates `text`; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<(String, String)>> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| vec![(String::new(), e.to_string().trim().to_string())])?;
        let mut v = Validator::default();
        let mut config = v.config(raw, base);
        config.policy_keys = digest::key_digests(text).unwrap_or_default();
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(v.problems)
        }
    }
}

impl Config {
    /// The routes a client with the certificate `common_name` is pushed:
    /// every route-table destination in a split tunnel (none in a full
    /// tunnel), but the client networks it carries itself.
    pub fn pushed_routes(&self, common_name: &str) -> Vec<Ipv4Net> {
        if !self.split_tunnel {
            return Vec::new();
        }
        self.routes
            .iter()
            .filter(|r| match r.target {
                RouteTarget::ClientNetwork(i) => self.client_networks[i].common_name != common_name,
                _ => true,
            })
            .map(|r| r.destination)
            .collect()
    }
}

mod cluster;
pub mod digest;
mod networks;
mod validate;

use validate::Validator;
pub use validate::parse_duration;

#[cfg(test)]
mod tests;
