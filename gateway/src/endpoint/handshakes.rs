//! Bounds on work done for peers that have not authenticated: a rate of
//! new handshakes per source address, and failed attempts without a
//! certificate counted per source and logged as one line per interval
//! instead of one line each (a flood of bare connects must not grow the
//! connection log by hundreds of bytes per connect).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use time::OffsetDateTime;

use super::connlog::{Event, Record, new_connection_id};

/// Sources tracked at once; past it, idle sources are forgotten first.
pub const MAX_SOURCES: usize = 65_536;

/// A token bucket per source address: `rate` new handshakes per second,
/// bursts of twice that.
pub struct SourceRate {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl SourceRate {
    /// Allows `rate` new handshakes per second per source.
    pub fn new(rate: u32) -> SourceRate {
        let rate = f64::from(rate.max(1));
        SourceRate {
            rate,
            burst: rate * 2.0,
            buckets: HashMap::new(),
        }
    }

    /// Changes the rate (a reload); buckets keep their tokens.
    pub fn set_rate(&mut self, rate: u32) {
        self.rate = f64::from(rate.max(1));
        self.burst = self.rate * 2.0;
    }

    /// Whether a new handshake from `ip` at `now` is within its rate (and
    /// takes a token if so).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&ip) {
            self.forget_idle(now);
            if self.buckets.len() >= MAX_SOURCES {
                // Every tracked source is busy: the global bound on
                // handshakes in progress still holds for this one.
                return true;
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let (tokens, at) = self.buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops sources whose bucket has refilled: they are as if new.
    fn forget_idle(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, (tokens, at)| {
            *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
        });
    }
}

/// One token bucket for everyone: `rate` per second, bursts of twice
/// that. Bounds what strangers can make the endpoint send (the answers to
/// OpenVPN resets, whatever their claimed source).
pub struct GlobalRate {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl GlobalRate {
    /// Allows `rate` events per second.
    pub fn new(rate: u32, now: Instant) -> GlobalRate {
        let rate = f64::from(rate.max(1));
        GlobalRate {
            rate,
            tokens: rate * 2.0,
            at: now,
        }
    }

    /// Whether one more event at `now` is within the rate (taking a
    /// token if so).
    pub fn allow(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate * 2.0);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct SourceFailures {
    count: u64,
    last_reason: String,
    first: OffsetDateTime,
    port: u16,
}

/// Failed attempts without a certificate, counted per source until the
/// next `drain`.
#[derive(Default)]
pub struct FailureTally {
    per_source: HashMap<IpAddr, SourceFailures>,
    /// Attempts from sources beyond `MAX_SOURCES`.
    others: u64,
}

impl FailureTally {
    /// Counts one failed attempt from `device`.
    pub fn add(&mut self, device: SocketAddr, reason: &str, when: OffsetDateTime) {
        let known = self.per_source.len() < MAX_SOURCES;
        match self.per_source.get_mut(&device.ip()) {
            Some(s) => {
                s.count += 1;
                if s.last_reason != reason {
                    s.last_reason = reason.to_string();
                }
            }
            None if known => {
                self.per_source.insert(
                    device.ip(),
                    SourceFailures {
                        count: 1,
                        last_reason: reason.to_string(),
                        first: when,
                        port: device.port(),
                    },
                );
            }
            None => self.others += 1,
        }
    }

    /// One failed-attempt record per source since the last call (the
    /// reason says how many and the last one), and the counts reset.
    pub fn drain(&mut self, interval_secs: u64) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .per_source
            .drain()
            .map(|(ip, s)| Record {
                connection_id: new_connection_id(),
                common_name: None,
                client_ip: None,
                device: SocketAddr::new(ip, s.port),
                udp: false,
                start: s.first,
                event: Event::Failed {
                    reason: summary(s.count, interval_secs, &s.last_reason),
                },
            })
            .collect();
        if self.others > 0 {
            out.push(Record {
                connection_id: new_connection_id(),
                common_name: None,
                client_ip: None,
                device: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                udp: false,
                start: OffsetDateTime::now_utc(),
                event: Event::Failed {
                    reason: summary(
                        self.others,
                        interval_secs,
                        "from sources beyond the tracked ones",
                    ),
                },
            });
            self.others = 0;
        }
        out
    }
}

fn summary(count: u64, secs: u64, last: &str) -> String {
    let noun = if count == 1 { "attempt" } else { "attempts" };
    format!("{count} {noun} without a client certificate in {secs} s (last: {last})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_source_gets_its_rate_and_burst() {
        let mut r = SourceRate::new(10);
        let t0 = Instant::now();
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "198.18.1.2".parse().unwrap();
        let allowed = (0..100).filter(|_| r.allow(a, t0)).count();
        assert_eq!(allowed, 20, "burst of twice the rate");
        assert!(r.allow(b, t0), "another source is not held back");
        assert!(!r.allow(a, t0 + Duration::from_millis(50)));
        assert!(r.allow(a, t0 + Duration::from_millis(150)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..100).filter(|_| r.allow(a, later)).count(), 20);
    }

    #[test]
    fn the_global_rate_holds_for_all_sources_together() {
        let t0 = Instant::now();
        let mut g = GlobalRate::new(100, t0);
        assert_eq!((0..1000).filter(|_| g.allow(t0)).count(), 200);
        let later = t0 + Duration::from_millis(100);
        assert_eq!((0..1000).filter(|_| g.allow(later)).count(), 10);
    }

    #[test]
    fn tracked_sources_are_bounded() {
        let mut r = SourceRate::new(1);
        let t0 = Instant::now();
        for i in 0..MAX_SOURCES as u32 + 10 {
            r.allow(IpAddr::V4(Ipv4Addr::from(i)), t0);
        }
        assert!(r.buckets.len() <= MAX_SOURCES);
        // Later, idle sources are forgotten to make room.
        assert!(r.allow("198.18.9.9".parse().unwrap(), t0 + Duration::from_secs(5)));
        assert!(r.buckets.len() <= MAX_SOURCES);
    }

    #[test]
    fn failures_become_one_line_per_source() {
        let mut t = FailureTally::default();
        let now = OffsetDateTime::now_utc();
        for port in 0..2000u16 {
            t.add(
                SocketAddr::new("198.18.0.2".parse().unwrap(), port),
                "TLS handshake failed: no certificate",
                now,
            );
        }
        t.add(
            "198.18.1.2:5".parse().unwrap(),
            "TLS handshake timed out",
            now,
        );
        let mut lines = t.drain(10);
        lines.sort_by_key(|r| r.device);
        assert_eq!(lines.len(), 2);
        let Event::Failed { reason } = &lines[0].event else {
            panic!("not a failure")
        };
        assert_eq!(
            reason,
            "2000 attempts without a client certificate in 10 s (last: TLS handshake failed: no certificate)"
        );
        assert!(t.drain(10).is_empty(), "counts reset");
    }
}
