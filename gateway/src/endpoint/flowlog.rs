//! The flow log: one JSON line when a forwarded flow starts and one when it
//! ends, with the field names of the cloud's VPC flow logs (version 5) plus
//! the tunnel's (`connection-id`, `common-name`, `target-network`). Its
//! source is the kernel's connection tracking (`netsetup::conntrack` turns
//! conntrack events into [`FlowEvent`]s); this module attributes each flow
//! to the session that made it, when it starts, and remembers that until
//! it ends, as sessions (and their addresses) may be gone by then.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

use super::flowbudget::Budgets;
use crate::config::RouteTarget;

/// Flows remembered between their start and end lines at once: beyond it a
/// flow still gets its start line, but no end line.
pub const MAX_TRACKED_FLOWS: usize = 131_072;

/// A flow as conntrack describes it, in the tunnel's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The client's tunnel address and port (the original source).
    pub pkt_src: (Ipv4Addr, u16),
    /// The destination the client addressed (an alias, for an aliased
    /// target network).
    pub dst: (Ipv4Addr, u16),
    /// The destination's real address: the reply's source (the alias
    /// translated, for an aliased network; else `dst`).
    pub real_dst: (Ipv4Addr, u16),
    /// What the target saw as the source: the reply's destination, so the
    /// ENI address and the port SNAT chose, or the client's own.
    pub src: (Ipv4Addr, u16),
    /// IANA protocol number.
    pub protocol: u8,
}

/// What conntrack reported about a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    /// The kernel confirmed a new flow.
    Start {
        /// Conntrack's id of the flow, unique while it lives.
        id: u32,
        /// The flow.
        flow: Flow,
    },
    /// The kernel forgot a flow.
    End {
        /// Conntrack's id of the flow.
        id: u32,
        /// The flow.
        flow: Flow,
        /// Packets, both directions.
        packets: u64,
        /// Bytes at the IP layer, both directions.
        bytes: u64,
    },
}

/// Who made a flow, as the session registry knows it at the flow's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    /// The session's connection id (as in the connection log).
    pub connection_id: String,
    /// The client certificate's common name.
    pub common_name: String,
    /// The id of the target network the route table sends the flow to.
    pub target_network: String,
}

struct Started {
    flow: Flow,
    who: Attribution,
    start: i64,
}

/// Flows between their start and end: turns events into log lines,
/// within each session's budget.
#[derive(Default)]
pub struct FlowTracker {
    started: HashMap<u32, Started>,
    /// Flows whose start was over budget: their session's connection id
    /// and the flow, so that their end adds to the summary.
    unlogged: HashMap<u32, (String, Flow)>,
    /// Each session's budget of start lines.
    pub budgets: Budgets,
    /// Start lines not written, over budget, since the tracker began.
    suppressed: u64,
}

impl FlowTracker {
    /// Flows remembered now (logged and not).
    pub fn len(&self) -> usize {
        self.started.len() + self.unlogged.len()
    }

    /// No flow remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flow starts not logged (over a session's budget) so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// The line for `event` at Unix time `now`, if it is a client's flow:
    /// `attribute` names the session behind a tunnel address and the target
    /// network of a destination (None: not a flow from a client). An end
    /// whose start was not seen (it began before the gateway listened, or
    /// the table was full) gets no line: it could not be attributed.
    pub fn line(
        &mut self,
        event: FlowEvent,
        now: i64,
        attribute: impl FnOnce(&Flow) -> Option<Attribution>,
    ) -> Option<Value> {
        match event {
            FlowEvent::Start { id, flow } => {
                let who = attribute(&flow)?;
                if !self.budgets.admit(&who, now) {
                    self.suppressed += 1;
                    if self.len() < MAX_TRACKED_FLOWS {
                        self.unlogged.insert(id, (who.connection_id, flow));
                    }
                    return None;
                }
                let line = record("flow-start", &flow, &who, now, None);
                if self.len() < MAX_TRACKED_FLOWS {
                    self.started.insert(
                        id,
                        Started {
                            flow,
                            who,
                            start: now,
                        },
                    );
                }
                Some(line)
            }
            FlowEvent::End {
                id,
                flow,
                packets,
                bytes,
            } => {
                // Ids are reused once a flow is gone: the tuple must match.
                let same = |f: &Flow| {
                    f.pkt_src == flow.pkt_src && f.dst == flow.dst && f.protocol == flow.protocol
                };
                if let Some((connection_id, f)) = self.unlogged.remove(&id) {
                    if same(&f) {
                        self.budgets.ended_unlogged(&connection_id, packets, bytes);
                    }
                    return None;
                }
                let s = self.started.remove(&id)?;
                if !same(&s.flow) {
                    return None;
                }
                let mut line = record("flow-end", &flow, &s.who, s.start, Some(now));
                if let Value::Object(m) = &mut line {
                    m.insert("packets".into(), json!(packets));
                    m.insert("bytes".into(), json!(bytes));
                }
                Some(line)
            }
        }
    }
}

fn record(kind: &str, flow: &Flow, who: &Attribution, start: i64, end: Option<i64>) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("version", json!(5));
    put("flow-log-type", json!(kind));
    put("connection-id", json!(who.connection_id));
    put("common-name", json!(who.common_name));
    put("pkt-srcaddr", json!(flow.pkt_src.0.to_string()));
    put("pkt-srcport", json!(flow.pkt_src.1));
    put("srcaddr", json!(flow.src.0.to_string()));
    put("srcport", json!(flow.src.1));
    put("dstaddr", json!(flow.real_dst.0.to_string()));
    put("dstport", json!(flow.real_dst.1));
    if flow.real_dst.0 != flow.dst.0 {
        put("alias-dstaddr", json!(flow.dst.0.to_string()));
    }
    put("protocol", json!(flow.protocol));
    put("target-network", json!(who.target_network));
    put("start", json!(start));
    if let Some(end) = end {
        put("end", json!(end));
    }
    Value::Object(m)
}

impl super::Endpoint {
    /// Who made `flow`: the live session at its source address (or the
    /// session carrying the client network it comes from), and the target
    /// network the route table sends its destination to. A flow a host of
    /// a target network opens into a client network is its carrier's,
    /// with that target network. None for flows that are not a client's
    /// (the gateway's own, client-to-client).
    pub fn attribute_flow(&self, flow: &Flow) -> Option<Attribution> {
        let config = self.config();
        let (src, dst) = (flow.pkt_src.0, flow.dst.0);
        let (session, index) = if config.client_cidr.contains(&src) {
            (self.sessions.get(src)?, self.target_of(dst)?)
        } else if let Some(index) = self.target_of(dst) {
            (self.carrier_of(&config, src)?, index)
        } else {
            let index = config
                .client_networks
                .iter()
                .find(|n| n.cidr.contains(&dst))?
                .reachable_from
                .iter()
                .copied()
                .find(|&t| config.target_networks[t].vpc_cidr.contains(&src))?;
            (self.carrier_of(&config, dst)?, index)
        };
        Some(Attribution {
            connection_id: session.connection_id.clone(),
            common_name: session.common_name.clone(),
            target_network: config.target_networks.get(index)?.id.clone(),
        })
    }

    /// The target network the route table sends `dst` to, if any.
    fn target_of(&self, dst: Ipv4Addr) -> Option<usize> {
        match self.policy.load().routes.lookup(dst)? {
            RouteTarget::Network(index) => Some(index),
            _ => None,
        }
    }

    /// The live session carrying the client network that holds `addr`.
    fn carrier_of(
        &self,
        config: &crate::config::Config,
        addr: Ipv4Addr,
    ) -> Option<std::sync::Arc<super::session::Session>> {
        let n = config
            .client_networks
            .iter()
            .find(|n| n.cidr.contains(&addr))?;
        self.sessions.carrier(&n.common_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src_port: u16) -> Flow {
        Flow {
            pkt_src: (Ipv4Addr::new(10, 250, 0, 2), src_port),
            dst: (Ipv4Addr::new(192, 168, 1, 2), 5432),
            real_dst: (Ipv4Addr::new(192, 168, 1, 2), 5432),
            src: (Ipv4Addr::new(192, 168, 1, 1), 61_000),
            protocol: 6,
        }
    }

    fn alice(_: &Flow) -> Option<Attribution> {
        Some(Attribution {
            connection_id: "cvpn-conn-1".into(),
            common_name: "alice".into(),
            target_network: "vpc-a".into(),
        })
    }

    #[test]
    fn an_aliased_destination_is_logged_real_with_its_alias() {
        let mut t = FlowTracker::default();
        let mut f = flow(40_001);
        f.dst = (Ipv4Addr::new(100, 70, 1, 2), 5432);
        let line = t
            .line(FlowEvent::Start { id: 9, flow: f }, 100, alice)
            .unwrap();
        assert_eq!(line["dstaddr"], "192.168.1.2");
        assert_eq!(line["alias-dstaddr"], "100.70.1.2");
        let plain = t
            .line(
                FlowEvent::Start {
                    id: 10,
                    flow: flow(40_002),
                },
                100,
                alice,
            )
            .unwrap();
        assert!(plain.get("alias-dstaddr").is_none());
    }

    #[test]
    fn a_flow_gets_a_start_and_an_end_line_naming_its_user() {
        let mut t = FlowTracker::default();
        let start = t
            .line(
                FlowEvent::Start {
                    id: 7,
                    flow: flow(40_000),
                },
                100,
                alice,
            )
            .unwrap();
        assert_eq!(start["flow-log-type"], "flow-start");
        assert_eq!(start["common-name"], "alice");
        assert_eq!(start["connection-id"], "cvpn-conn-1");
        assert_eq!(start["pkt-srcaddr"], "10.250.0.2");
        assert_eq!(start["pkt-srcport"], 40_000);
        assert_eq!(start["srcaddr"], "192.168.1.1");
        assert_eq!(start["srcport"], 61_000);
        assert_eq!(start["dstport"], 5432);
        assert_eq!(start["protocol"], 6);
        assert_eq!(start["target-network"], "vpc-a");
        assert!(start.get("bytes").is_none());
        assert_eq!(t.len(), 1);

        // The session is gone by the end: the start's attribution stays.
        let end = FlowEvent::End {
            id: 7,
            flow: flow(40_000),
            packets: 10,
            bytes: 1234,
        };
        let end = t.line(end, 160, |_| None).unwrap();
        assert_eq!(end["flow-log-type"], "flow-end");
        assert_eq!(end["common-name"], "alice");
        assert_eq!(
            (end["start"].as_i64(), end["end"].as_i64()),
            (Some(100), Some(160))
        );
        assert_eq!(
            (end["packets"].as_u64(), end["bytes"].as_u64()),
            (Some(10), Some(1234))
        );
        assert!(t.is_empty());
    }

    #[test]
    fn flows_of_no_session_and_ends_of_unseen_starts_get_no_line() {
        let mut t = FlowTracker::default();
        assert!(
            t.line(
                FlowEvent::Start {
                    id: 1,
                    flow: flow(1)
                },
                0,
                |_| None
            )
            .is_none()
        );
        let end = FlowEvent::End {
            id: 1,
            flow: flow(1),
            packets: 1,
            bytes: 1,
        };
        assert!(t.line(end, 1, alice).is_none());
        // A reused id with another tuple is not the remembered flow.
        t.line(
            FlowEvent::Start {
                id: 2,
                flow: flow(2),
            },
            0,
            alice,
        )
        .unwrap();
        let other = FlowEvent::End {
            id: 2,
            flow: flow(3),
            packets: 1,
            bytes: 1,
        };
        assert!(t.line(other, 1, alice).is_none());
    }

    #[test]
    fn flows_over_budget_get_no_lines_but_are_summarized() {
        let mut t = FlowTracker::default();
        t.budgets.set_rate(1);
        let start = |t: &mut FlowTracker, id: u32| {
            t.line(
                FlowEvent::Start {
                    id,
                    flow: flow(40_000 + id as u16),
                },
                100,
                alice,
            )
        };
        let logged = (0..10).filter(|&id| start(&mut t, id).is_some()).count();
        assert_eq!(logged, 4, "the burst of a rate of 1");
        assert_eq!(t.suppressed(), 6);
        let end = FlowEvent::End {
            id: 9,
            flow: flow(40_009),
            packets: 2,
            bytes: 120,
        };
        assert!(
            t.line(end, 101, alice).is_none(),
            "no end line without a start line"
        );
        let summary = t.budgets.summaries(110);
        assert_eq!(summary.len(), 1);
        assert_eq!(
            (summary[0]["flows"].as_u64(), summary[0]["packets"].as_u64()),
            (Some(6), Some(2))
        );
        assert_eq!(summary[0]["bytes"], 120);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = FlowTracker::default();
        t.budgets.set_rate(1_000_000);
        for id in 0..MAX_TRACKED_FLOWS as u32 + 10 {
            assert!(
                t.line(FlowEvent::Start { id, flow: flow(1) }, 0, alice)
                    .is_some()
            );
        }
        assert_eq!(t.len(), MAX_TRACKED_FLOWS);
    }
}
