//! The metrics endpoint's content (`metrics_listen`): what the gateway
//! counts, in the OpenMetrics text format Prometheus scrapes, named after
//! the managed service's CloudWatch metrics where one exists
//! (ActiveConnectionsCount, AuthenticationFailures, CrlDaysToExpiry,
//! IngressBytes, EgressBytes, IngressPackets, EgressPackets); and the one
//! request line the endpoint answers. Pure: the listener is in
//! metrics_http.rs.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::connlog::Traffic;
use super::session::Protocol;
use super::tally::{ClusterState, Drops, FAILURE_REASONS, Tally, index_of, values};
use super::threads::DataThreads;

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything one scrape reports.
pub struct Snapshot<'a> {
    /// Attempts, ended sessions, reloads, handshake durations.
    pub tally: &'a Tally,
    /// Packets not forwarded.
    pub drops: &'a Drops,
    /// The protocol and traffic of each session alive now.
    pub active: &'a [(Protocol, Traffic)],
    /// Addresses of the pool not assigned.
    pub free_addresses: u64,
    /// Seconds until the CRL's next update (negative: expired), if the
    /// endpoint has one.
    pub crl_seconds_to_expiry: Option<i64>,
    /// With `[cluster]`: what the node knows of its cluster.
    pub cluster: Option<&'a ClusterState>,
    /// With `transport_protocol = "udp"`: the packet threads' counters.
    pub data_threads: Option<&'a DataThreads>,
}

type Labels = Vec<(String, String)>;

const PROTOCOLS: [Protocol; 2] = [Protocol::Cvpn, Protocol::OpenVpn];

fn family(registry: &mut Registry, name: &str, help: &str, rows: &[(&str, &str, u64)]) {
    let f = Family::<Labels, Counter>::default();
    for (key, value, n) in rows {
        f.get_or_create(&vec![(key.to_string(), value.to_string())])
            .inc_by(*n);
    }
    registry.register(name, help, f);
}

fn gauges(registry: &mut Registry, name: &str, help: &str, rows: &[(&str, &str, i64)]) {
    let f = Family::<Labels, Gauge>::default();
    for (key, value, n) in rows {
        f.get_or_create(&vec![(key.to_string(), value.to_string())])
            .set(*n);
    }
    registry.register(name, help, f);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, n: i64) {
    let g = Gauge::<i64>::default();
    g.set(n);
    registry.register(name, help, g);
}

/// Each packet thread's counters, labelled with its number (thread i
/// reads UDP socket i and tun queue i).
fn per_thread(r: &mut Registry, threads: &DataThreads) {
    gauge(
        r,
        "data_threads",
        "Packet threads, each with a UDP socket and a tun queue of its own",
        threads.rows().len() as i64,
    );
    let help = [
        "Datagrams from clients received by the packet thread",
        "Receive calls (batches of datagrams) of the packet thread",
        "Packets toward clients read from the packet thread's tun queue",
        "Writes to the packet thread's tun queue (one frame may carry many packets)",
        "Packets from clients that went to the tun queue inside another's frame (coalesced)",
    ];
    for (i, help) in help.iter().enumerate() {
        let f = Family::<Labels, Counter>::default();
        let mut name = "";
        for (t, row) in threads.rows().iter().enumerate() {
            let (n, v) = row.values()[i];
            name = n;
            f.get_or_create(&vec![("thread".to_string(), t.to_string())])
                .inc_by(v);
        }
        r.register(format!("data_thread_{name}"), *help, f);
    }
}

/// The scrape's body.
pub fn render(s: &Snapshot) -> String {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let t = s.tally;
    // Per protocol: ended sessions' traffic plus the live ones'.
    let mut traffic = [[0u64; 4]; 2];
    let mut active = [0i64; 2];
    for (p, row) in traffic.iter_mut().enumerate() {
        *row = std::array::from_fn(|i| load(&t.ended_traffic[p][i]));
    }
    for (proto, tr) in s.active {
        let p = index_of(*proto);
        active[p] += 1;
        for (sum, v) in traffic[p].iter_mut().zip(values(tr)) {
            *sum += v;
        }
    }
    let by_protocol = |i: usize| -> Vec<(&str, &str, u64)> {
        PROTOCOLS
            .iter()
            .map(|p| ("protocol", p.name(), traffic[index_of(*p)][i]))
            .collect()
    };
    let mut r = Registry::with_prefix("cvpn");
    gauges(
        &mut r,
        "active_connections",
        "Client sessions open now (ActiveConnectionsCount), by protocol",
        &PROTOCOLS.map(|p| ("protocol", p.name(), active[index_of(p)])),
    );
    gauge(
        &mut r,
        "client_addresses_free",
        "Addresses of client_cidr not assigned",
        i64::try_from(s.free_addresses).unwrap_or(i64::MAX),
    );
    family(
        &mut r,
        "connection_attempts",
        "Connection attempts by connection-attempt-status, as in the connection log",
        &[
            ("status", "successful", load(&t.connected)),
            ("status", "failed", load(&t.failed)),
        ],
    );
    let mut reasons: Vec<(&str, &str, u64)> = FAILURE_REASONS
        .iter()
        .enumerate()
        .map(|(i, r)| ("reason", *r, load(&t.failed_by_reason[i])))
        .collect();
    reasons.push((
        "reason",
        "other",
        load(&t.failed_by_reason[FAILURE_REASONS.len()]),
    ));
    family(
        &mut r,
        "authentication_failures",
        "Failed connection attempts (AuthenticationFailures), by reason",
        &reasons,
    );
    family(
        &mut r,
        "sessions_ended",
        "Client sessions that ended, by protocol",
        &PROTOCOLS.map(|p| ("protocol", p.name(), load(&t.ended[index_of(p)]))),
    );
    for (i, (name, help)) in [
        (
            "ingress_bytes",
            "Bytes of IP packets from clients (IngressBytes)",
        ),
        (
            "egress_bytes",
            "Bytes of IP packets to clients (EgressBytes)",
        ),
        (
            "ingress_packets",
            "IP packets from clients (IngressPackets)",
        ),
        ("egress_packets", "IP packets to clients (EgressPackets)"),
    ]
    .into_iter()
    .enumerate()
    {
        family(&mut r, name, help, &by_protocol(i));
    }
    family(
        &mut r,
        "config_reloads",
        "Configuration reloads (SIGHUP, cvpn-gw reload) by result",
        &[
            ("result", "applied", load(&t.reloads_applied)),
            ("result", "refused", load(&t.reloads_refused)),
        ],
    );
    let overruns = Counter::<u64>::default();
    overruns.inc_by(load(&t.flow_log_overruns));
    r.register(
        "flow_log_overruns",
        "Times conntrack events were lost because the flow log fell behind",
        overruns,
    );
    let suppressed = Counter::<u64>::default();
    suppressed.inc_by(load(&t.flow_log_suppressed));
    r.register(
        "flow_log_suppressed",
        "Flow starts not logged because their session was over flow_log_rate (in flow-summary lines)",
        suppressed,
    );
    if let Some(threads) = s.data_threads {
        per_thread(&mut r, threads);
    }
    let d = s.drops;
    family(
        &mut r,
        "dropped_packets",
        "Packets the gateway did not forward, by reason",
        &[
            ("reason", "spoofed_source", load(&d.spoofed)),
            ("reason", "no_route", load(&d.no_route)),
            ("reason", "not_authorized", load(&d.denied)),
            ("reason", "malformed", load(&d.malformed)),
            ("reason", "ipv6", load(&d.ipv6)),
            ("reason", "no_session", load(&d.no_session)),
            ("reason", "queue_full", load(&d.queue_full)),
        ],
    );
    if let Some(secs) = s.crl_seconds_to_expiry {
        gauge(
            &mut r,
            "crl_seconds_to_expiry",
            "Seconds until the CRL's next update (CrlDaysToExpiry); negative: expired",
            secs,
        );
    }
    if let Some(c) = s.cluster {
        gauge(
            &mut r,
            "cluster_store_up",
            "1 if the cluster's etcd answered this node's last heartbeat",
            i64::from(c.store_up.load(Ordering::Relaxed)),
        );
        gauge(
            &mut r,
            "cluster_nodes",
            "Live nodes of the cluster at this node's last heartbeat",
            c.nodes.load(Ordering::Relaxed) as i64,
        );
        r.register(
            "cluster_store_latency_seconds",
            "How long each heartbeat's requests to the cluster's etcd took",
            c.store_latency.clone(),
        );
    }
    r.register(
        "handshake_duration_seconds",
        "From a connection's first byte to its client's admission",
        t.handshake.clone(),
    );
    let mut out = String::new();
    // Writing into a String does not fail.
    let _ = encode(&mut out, &r);
    out
}

/// What the endpoint answers to a request line.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

pub fn route(request_line: &str) -> Route {
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        (_, "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::connlog::Event;

    fn traffic(n: u64) -> Traffic {
        Traffic {
            ingress_bytes: n,
            egress_bytes: 2 * n,
            ingress_packets: 3 * n,
            egress_packets: 4 * n,
        }
    }

    #[test]
    fn totals_add_ended_and_live_sessions_by_protocol() {
        let tally = Tally::default();
        tally.count(&Event::Connected);
        tally.count(&Event::Connected);
        tally.count(&Event::Failed {
            reason: "TLS handshake failed: invalid peer certificate: Revoked".into(),
        });
        tally.session_ended(Protocol::OpenVpn, &traffic(100));
        tally.session_started(0.03);
        let drops = Drops::default();
        drops.denied.fetch_add(7, Ordering::Relaxed);
        let cluster = ClusterState::default();
        cluster.store_up.store(true, Ordering::Relaxed);
        cluster.nodes.store(3, Ordering::Relaxed);
        cluster.store_latency.observe(0.004);
        let threads = DataThreads::new(2);
        threads.row(1).coalesced.fetch_add(9, Ordering::Relaxed);
        let text = render(&Snapshot {
            cluster: Some(&cluster),
            data_threads: Some(&threads),
            tally: &tally,
            drops: &drops,
            active: &[
                (Protocol::Cvpn, traffic(1)),
                (Protocol::OpenVpn, traffic(1)),
            ],
            free_addresses: 250,
            crl_seconds_to_expiry: Some(-5),
        });
        for line in [
            "cvpn_active_connections{protocol=\"cvpn\"} 1",
            "cvpn_active_connections{protocol=\"openvpn\"} 1",
            "cvpn_client_addresses_free 250",
            "cvpn_connection_attempts_total{status=\"successful\"} 2",
            "cvpn_connection_attempts_total{status=\"failed\"} 1",
            "cvpn_authentication_failures_total{reason=\"certificate_revoked\"} 1",
            "cvpn_authentication_failures_total{reason=\"other\"} 0",
            "cvpn_sessions_ended_total{protocol=\"openvpn\"} 1",
            "cvpn_ingress_bytes_total{protocol=\"openvpn\"} 101",
            "cvpn_egress_bytes_total{protocol=\"cvpn\"} 2",
            "cvpn_data_threads 2",
            "cvpn_data_thread_coalesced_total{thread=\"1\"} 9",
            "cvpn_data_thread_datagrams_total{thread=\"0\"} 0",
            "cvpn_egress_packets_total{protocol=\"openvpn\"} 404",
            "cvpn_dropped_packets_total{reason=\"not_authorized\"} 7",
            "cvpn_crl_seconds_to_expiry -5",
            "cvpn_handshake_duration_seconds_count 1",
            "cvpn_cluster_store_up 1",
            "cvpn_cluster_nodes 3",
            "cvpn_cluster_store_latency_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route("GET /metrics HTTP/1.1"), Route::Metrics);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0"), Route::Metrics);
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route("GET /metrics"), Route::BadRequest);
        assert_eq!(route("GET /metrics SPDY/3"), Route::BadRequest);
        assert_eq!(route("\u{0}\u{1} garbage"), Route::BadRequest);
        assert_eq!(route(""), Route::BadRequest);
    }
}
