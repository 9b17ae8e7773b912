//! The metrics endpoint's content (`metrics_listen`): what the gateway
//! counts, in the OpenMetrics text format Prometheus scrapes, and the one
//! request line the endpoint answers. Pure: the listener is in the binary.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::connlog::{Event, Traffic};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
}

/// Connection attempts and the traffic of ended sessions, counted as the
/// connection log is written.
#[derive(Default)]
pub struct Tally {
    connected: AtomicU64,
    failed: AtomicU64,
    ended: AtomicU64,
    ended_traffic: [AtomicU64; 4],
    reloads_applied: AtomicU64,
    reloads_refused: AtomicU64,
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
    pub fn count_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self, event: &Event) {
        match event {
            Event::Connected => self.connected.fetch_add(1, Ordering::Relaxed),
            Event::Failed { .. } => self.failed.fetch_add(1, Ordering::Relaxed),
            Event::Ended { traffic, .. } => {
                for (a, v) in self.ended_traffic.iter().zip(values(traffic)) {
                    a.fetch_add(v, Ordering::Relaxed);
                }
                self.ended.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn values(t: &Traffic) -> [u64; 4] {
    [
        t.ingress_bytes,
        t.egress_bytes,
        t.ingress_packets,
        t.egress_packets,
    ]
}

/// Everything one scrape reports.
pub struct Snapshot<'a> {
    pub tally: &'a Tally,
    pub drops: &'a Drops,
    /// Traffic of the sessions alive now.
    pub active: &'a [Traffic],
    pub free_addresses: u64,
}

type Labels = Vec<(String, String)>;

fn family(registry: &mut Registry, name: &str, help: &str, rows: &[(&str, &str, u64)]) {
    let f = Family::<Labels, Counter>::default();
    for (key, value, n) in rows {
        f.get_or_create(&vec![(key.to_string(), value.to_string())])
            .inc_by(*n);
    }
    registry.register(name, help, f);
}

fn counter(registry: &mut Registry, name: &str, help: &str, n: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(n);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, n: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(n).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

/// The scrape's body.
pub fn render(s: &Snapshot) -> String {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut traffic: [u64; 4] = std::array::from_fn(|i| load(&s.tally.ended_traffic[i]));
    for t in s.active {
        for (sum, v) in traffic.iter_mut().zip(values(t)) {
            *sum += v;
        }
    }
    let mut r = Registry::with_prefix("cvpn");
    gauge(
        &mut r,
        "sessions_active",
        "Client sessions open now",
        s.active.len() as u64,
    );
    gauge(
        &mut r,
        "client_addresses_free",
        "Addresses of client_cidr not assigned",
        s.free_addresses,
    );
    family(
        &mut r,
        "connection_attempts",
        "Connection attempts by connection-attempt-status, as in the connection log",
        &[
            ("status", "successful", load(&s.tally.connected)),
            ("status", "failed", load(&s.tally.failed)),
        ],
    );
    counter(
        &mut r,
        "sessions_ended",
        "Client sessions that ended",
        load(&s.tally.ended),
    );
    let [ib, eb, ip, ep] = traffic;
    family(
        &mut r,
        "tunnel_bytes",
        "Bytes of IP packets through client tunnels (ingress: from clients)",
        &[("direction", "ingress", ib), ("direction", "egress", eb)],
    );
    family(
        &mut r,
        "tunnel_packets",
        "IP packets through client tunnels (ingress: from clients)",
        &[("direction", "ingress", ip), ("direction", "egress", ep)],
    );
    family(
        &mut r,
        "config_reloads",
        "Configuration reloads (SIGHUP, cvpn-gw reload) by result",
        &[
            ("result", "applied", load(&s.tally.reloads_applied)),
            ("result", "refused", load(&s.tally.reloads_refused)),
        ],
    );
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

    fn traffic(n: u64) -> Traffic {
        Traffic {
            ingress_bytes: n,
            egress_bytes: 2 * n,
            ingress_packets: 3 * n,
            egress_packets: 4 * n,
        }
    }

    #[test]
    fn totals_add_ended_and_live_sessions() {
        let tally = Tally::default();
        tally.count(&Event::Connected);
        tally.count(&Event::Connected);
        tally.count(&Event::Failed {
            reason: "revoked".into(),
        });
        tally.count(&Event::Ended {
            end: time::OffsetDateTime::UNIX_EPOCH,
            reason: "bye".into(),
            traffic: traffic(100),
        });
        let drops = Drops::default();
        drops.denied.fetch_add(7, Ordering::Relaxed);
        let text = render(&Snapshot {
            tally: &tally,
            drops: &drops,
            active: &[traffic(1)],
            free_addresses: 250,
        });
        for line in [
            "cvpn_sessions_active 1",
            "cvpn_client_addresses_free 250",
            "cvpn_connection_attempts_total{status=\"successful\"} 2",
            "cvpn_connection_attempts_total{status=\"failed\"} 1",
            "cvpn_sessions_ended_total 1",
            "cvpn_tunnel_bytes_total{direction=\"ingress\"} 101",
            "cvpn_tunnel_bytes_total{direction=\"egress\"} 202",
            "cvpn_tunnel_packets_total{direction=\"egress\"} 404",
            "cvpn_dropped_packets_total{reason=\"not_authorized\"} 7",
            "cvpn_dropped_packets_total{reason=\"spoofed_source\"} 0",
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
