//! The flow log's budget: each session may have `flow_log_rate`
//! flow-start lines a second (bursts of four times that); past it its
//! flows are counted, not logged, and one `flow-summary` line per session
//! every 10 s says how many flows (and, as they end, packets and bytes)
//! went unlogged and to which target networks. One client opening
//! thousands of flows a second then writes a few lines a second, not
//! megabytes, and everyone else's flows are still logged.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use super::flowlog::Attribution;

/// Default flow-start lines per session per second.
pub const DEFAULT_RATE: u32 = 50;
/// The burst: this many seconds' worth of lines.
pub const BURST_SECONDS: u32 = 4;
/// How often a session's summary is written (when there is one).
pub const SUMMARY_INTERVAL: i64 = 10;
/// A session's budget is forgotten once idle this long with nothing to
/// summarize (its bucket is full again by then).
const IDLE_FORGET: i64 = 60;

/// What one session's flows went unlogged since its last summary.
#[derive(Default)]
struct Unlogged {
    flows: u64,
    packets: u64,
    bytes: u64,
    /// Unlogged flows by target network id (a handful per endpoint).
    networks: BTreeMap<String, u64>,
}

struct Budget {
    who: Attribution,
    tokens: u32,
    /// When the bucket was last refilled (whole seconds).
    refilled: i64,
    /// When the current summary window began.
    window: i64,
    unlogged: Unlogged,
}

/// Every session's budget, by connection id.
pub struct Budgets {
    rate: u32,
    sessions: HashMap<String, Budget>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets::new(DEFAULT_RATE)
    }
}

impl Budgets {
    /// Budgets of `rate` lines per session per second.
    pub fn new(rate: u32) -> Budgets {
        Budgets {
            rate,
            sessions: HashMap::new(),
        }
    }

    /// Changes the rate (a reload); buckets keep their tokens.
    pub fn set_rate(&mut self, rate: u32) {
        self.rate = rate;
    }

    fn burst(&self) -> u32 {
        self.rate.saturating_mul(BURST_SECONDS)
    }

    /// True if `who` may log one more flow start at `now`; false: the
    /// flow is counted as unlogged under `who` instead.
    pub fn admit(&mut self, who: &Attribution, now: i64) -> bool {
        let (rate, burst) = (self.rate, self.burst());
        let b = self
            .sessions
            .entry(who.connection_id.clone())
            .or_insert_with(|| Budget {
                who: who.clone(),
                tokens: burst,
                refilled: now,
                window: now,
                unlogged: Unlogged::default(),
            });
        let elapsed = now
            .saturating_sub(b.refilled)
            .clamp(0, i64::from(BURST_SECONDS));
        if elapsed > 0 {
            b.tokens = b
                .tokens
                .saturating_add(rate.saturating_mul(elapsed as u32))
                .min(burst);
            b.refilled = now;
        }
        if b.tokens > 0 {
            b.tokens -= 1;
            return true;
        }
        if b.unlogged.flows == 0 {
            b.window = now;
        }
        b.unlogged.flows += 1;
        *b.unlogged
            .networks
            .entry(who.target_network.clone())
            .or_default() += 1;
        false
    }

    /// Adds an unlogged flow's counters, at its end, to its session's
    /// summary.
    pub fn ended_unlogged(&mut self, connection_id: &str, packets: u64, bytes: u64) {
        if let Some(b) = self.sessions.get_mut(connection_id) {
            b.unlogged.packets += packets;
            b.unlogged.bytes += bytes;
        }
    }

    /// The summary lines due at `now` (each session with unlogged flows
    /// whose window is `SUMMARY_INTERVAL` old); forgets idle sessions.
    pub fn summaries(&mut self, now: i64) -> Vec<Value> {
        let mut lines = Vec::new();
        for b in self.sessions.values_mut() {
            let u = &b.unlogged;
            let due = now - b.window >= SUMMARY_INTERVAL;
            if due && (u.flows > 0 || u.packets > 0) {
                lines.push(json!({
                    "version": 5,
                    "flow-log-type": "flow-summary",
                    "connection-id": b.who.connection_id,
                    "common-name": b.who.common_name,
                    "flows": u.flows,
                    "packets": u.packets,
                    "bytes": u.bytes,
                    "target-networks": u.networks,
                    "start": b.window,
                    "end": now,
                }));
                b.unlogged = Unlogged::default();
                b.window = now;
            }
        }
        let forget = |b: &Budget| {
            b.unlogged.flows == 0 && b.unlogged.packets == 0 && now - b.refilled >= IDLE_FORGET
        };
        self.sessions.retain(|_, b| !forget(b));
        lines
    }

    /// Sessions with a budget now.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// No session has a budget.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: &str) -> Attribution {
        Attribution {
            connection_id: id.into(),
            common_name: format!("user-{id}"),
            target_network: "tn-a".into(),
        }
    }

    #[test]
    fn a_burst_then_the_rate_then_a_summary() {
        let mut b = Budgets::new(50);
        let (flood, calm) = (who("flood"), who("calm"));
        let admitted = (0..1000).filter(|_| b.admit(&flood, 100)).count();
        assert_eq!(admitted, 200, "the burst");
        assert!(b.admit(&calm, 100), "another session has its own budget");
        // One second later, one second's worth.
        let admitted = (0..1000).filter(|_| b.admit(&flood, 101)).count();
        assert_eq!(admitted, 50);
        b.ended_unlogged("flood", 3, 180);
        assert!(b.summaries(105).is_empty(), "not before 10 s");
        let lines = b.summaries(110);
        assert_eq!(lines.len(), 1);
        let s = &lines[0];
        assert_eq!(s["flow-log-type"], "flow-summary");
        assert_eq!(s["common-name"], "user-flood");
        assert_eq!(s["flows"], 800 + 950);
        assert_eq!(
            (s["packets"].as_u64(), s["bytes"].as_u64()),
            (Some(3), Some(180))
        );
        assert_eq!(s["target-networks"]["tn-a"], 1750);
        assert_eq!(s["start"], 100);
        assert!(b.summaries(125).is_empty(), "nothing new to say");
        // Idle sessions are forgotten.
        b.summaries(200);
        assert!(b.is_empty());
    }

    #[test]
    fn a_long_pause_refills_only_the_burst() {
        let mut b = Budgets::new(10);
        let w = who("w");
        assert_eq!((0..100).filter(|_| b.admit(&w, 0)).count(), 40);
        assert_eq!((0..100).filter(|_| b.admit(&w, 3600)).count(), 40);
    }
}
