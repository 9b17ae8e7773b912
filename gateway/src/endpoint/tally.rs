//! What the endpoint counts for its metrics: packets not forwarded,
//! connection attempts and why they failed, sessions and their traffic by
//! protocol, handshake durations, reloads.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::connlog::{Event, Traffic};
use super::session::Protocol;

/// Endpoint-wide drop counters: packets not forwarded, by reason.
#[derive(Default)]
pub struct Drops {
    /// From a client, with a source other than its address.
    pub spoofed: AtomicU64,
    /// From a client, to a destination no route covers.
    pub no_route: AtomicU64,
    /// From a client, to a destination its groups are not authorized for.
    pub denied: AtomicU64,
    /// Not a well-formed IPv4 packet (or offload header).
    pub malformed: AtomicU64,
    /// IPv6 from a client (the tunnel carries IPv4).
    pub ipv6: AtomicU64,
    /// For a tunnel address no session has.
    pub no_session: AtomicU64,
    /// For a session whose queue was full.
    pub queue_full: AtomicU64,
    /// When a forged source was last warned about (Unix seconds).
    pub spoof_warned: AtomicU64,
}

/// What this node knows of its cluster (with `[cluster]`).
pub struct ClusterState {
    /// The store answered the last heartbeat.
    pub store_up: std::sync::atomic::AtomicBool,
    /// Live nodes at the last heartbeat.
    pub nodes: AtomicU64,
    /// How long each heartbeat's requests to the store took (seconds).
    pub store_latency: Histogram,
}

impl Default for ClusterState {
    fn default() -> ClusterState {
        ClusterState {
            store_up: Default::default(),
            nodes: Default::default(),
            // 1 ms to 4 s.
            store_latency: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
        }
    }
}

/// Why connection attempts fail, as few labels as tell them apart.
pub const FAILURE_REASONS: [&str; 11] = [
    "certificate_revoked",
    "certificate_refused",
    "tls_handshake",
    "rate_limited",
    "busy",
    "max_connections",
    "pool_exhausted",
    "protocol",
    "timeout",
    "tls_version",
    "no_shared_cipher",
];
/// Any other reason.
const OTHER: usize = FAILURE_REASONS.len();

/// The label of a connection log's failure reason.
pub fn failure_reason(reason: &str) -> usize {
    let r = reason.to_ascii_lowercase();
    let has = |s: &str| r.contains(s);
    if has("tls_version") {
        9
    } else if has("no shared data cipher") {
        10
    } else if has("revoked") {
        0
    } else if has("invalid peer certificate")
        || has("no client certificate")
        || has("certificate changed")
    {
        1
    } else if has("tls handshake") && !has("timed out") {
        2
    } else if has("handshake rate") {
        3
    } else if has("too many handshakes") || has("peer id") {
        4
    } else if has("max_connections") {
        5
    } else if has("no free address") {
        6
    } else if has("timed out") || has("within") {
        8
    } else if has("hello") || has("protocol") || has("openvpn") || has("alpn") {
        7
    } else {
        OTHER
    }
}

fn protocol_index(p: Protocol) -> usize {
    match p {
        Protocol::Cvpn => 0,
        Protocol::OpenVpn => 1,
    }
}

/// Counted as the connection log is written and as sessions start and
/// end.
pub struct Tally {
    pub(super) connected: AtomicU64,
    pub(super) failed: AtomicU64,
    /// Failed attempts by `FAILURE_REASONS` index (the last: other).
    pub(super) failed_by_reason: [AtomicU64; FAILURE_REASONS.len() + 1],
    /// Ended sessions by protocol.
    pub(super) ended: [AtomicU64; 2],
    /// Traffic of ended sessions by protocol: ingress and egress bytes,
    /// ingress and egress packets.
    pub(super) ended_traffic: [[AtomicU64; 4]; 2],
    pub(super) reloads_applied: AtomicU64,
    pub(super) reloads_refused: AtomicU64,
    /// Times conntrack events were lost because the flow log fell behind
    /// (the kernel reported a full socket buffer).
    pub flow_log_overruns: AtomicU64,
    /// Flow starts not logged: over their session's `flow_log_rate`.
    pub flow_log_suppressed: AtomicU64,
    /// From accepting a connection to admitting its client, in seconds.
    pub(super) handshake: Histogram,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            connected: AtomicU64::default(),
            failed: AtomicU64::default(),
            failed_by_reason: Default::default(),
            ended: Default::default(),
            ended_traffic: Default::default(),
            reloads_applied: AtomicU64::default(),
            reloads_refused: AtomicU64::default(),
            flow_log_overruns: AtomicU64::default(),
            flow_log_suppressed: AtomicU64::default(),
            // 5 ms .. 10 s.
            handshake: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
        }
    }
}

impl Tally {
    /// Counts one configuration reload, applied or refused.
    pub fn count_reload(&self, applied: bool) {
        let c = if applied {
            &self.reloads_applied
        } else {
            &self.reloads_refused
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed connection attempt.
    pub fn count_failed(&self, reason: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.failed_by_reason[failure_reason(reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection log record.
    pub fn count(&self, event: &Event) {
        match event {
            Event::Connected => {
                self.connected.fetch_add(1, Ordering::Relaxed);
            }
            Event::Failed { reason } => self.count_failed(reason),
            Event::Ended { .. } => {}
        }
    }

    /// A session started, `handshake` seconds after its connection came.
    pub fn session_started(&self, handshake: f64) {
        self.handshake.observe(handshake.max(0.0));
    }

    /// A session of `protocol` ended with `traffic`.
    pub fn session_ended(&self, protocol: Protocol, traffic: &Traffic) {
        let p = protocol_index(protocol);
        self.ended[p].fetch_add(1, Ordering::Relaxed);
        for (a, v) in self.ended_traffic[p].iter().zip(values(traffic)) {
            a.fetch_add(v, Ordering::Relaxed);
        }
    }
}

/// Ingress and egress bytes, ingress and egress packets.
pub fn values(t: &Traffic) -> [u64; 4] {
    [
        t.ingress_bytes,
        t.egress_bytes,
        t.ingress_packets,
        t.egress_packets,
    ]
}

/// The index of a protocol in per-protocol tallies.
pub fn index_of(p: Protocol) -> usize {
    protocol_index(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_of_the_connection_log_get_their_label() {
        let label = |r: &str| {
            FAILURE_REASONS
                .get(failure_reason(r))
                .copied()
                .unwrap_or("other")
        };
        assert_eq!(
            label("TLS handshake failed: invalid peer certificate: Revoked"),
            "certificate_revoked"
        );
        assert_eq!(
            label("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
            "certificate_refused"
        );
        assert_eq!(
            label("TLS handshake failed: peer sent no certificates"),
            "tls_handshake"
        );
        assert_eq!(label("TLS handshake timed out"), "timeout");
        assert_eq!(
            label("over the source address's handshake rate"),
            "rate_limited"
        );
        assert_eq!(
            label("the endpoint is at max_connections (3)"),
            "max_connections"
        );
        assert_eq!(label("no free address in client_cidr"), "pool_exhausted");
        assert_eq!(label("bad hello: packet before hello"), "protocol");
        assert_eq!(label("not authenticated within 20 s"), "timeout");
        assert_eq!(
            label("tls_version: the client offers no TLS version from 1.3 up"),
            "tls_version"
        );
        assert_eq!(
            label(crate::protocol::openvpn::control::NO_SHARED_CIPHER),
            "no_shared_cipher"
        );
        assert_eq!(label("something else"), "other");
    }
}
