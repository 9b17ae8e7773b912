//! Flows opened into client networks (sites), so that a site may answer
//! them. A site's own traffic follows the authorization rules of its
//! identity; its answers to a laptop, another site or a host of a
//! `reachable_from` network that opened a flow into it must pass even
//! where those rules (or the route table, for laptops) would not let the
//! site open one. The gateway sees every packet into a site, so it keeps
//! the flows' tuples here, bounded in count and idle time, as a small
//! conntrack of its own: a packet from a site that the policy refuses
//! passes if it answers a flow in this table.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Flows remembered at once; past it, new flows into sites are not
/// remembered (their answers are refused) until idle ones expire.
pub const MAX_FLOWS: usize = 65_536;
/// A flow with no packet into the site for this long is forgotten
/// (conntrack's UDP stream timeout is 120 s; TCP keepalives are rarer,
/// so this errs on the long side).
pub const IDLE: Duration = Duration::from_secs(300);
/// How often a full table is swept for idle flows, at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// One flow as the opener sent it: protocol, opener's address and port,
/// the site host's address and port (ICMP echo: the identifier as both
/// ports; other protocols: no ports).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct FlowKey {
    proto: u8,
    opener: (Ipv4Addr, u16),
    site: (Ipv4Addr, u16),
}

/// The IPv4 header fields a key needs: protocol, source, destination and
/// the transport header, if this is a first (or only) fragment.
fn parts(packet: &[u8]) -> Option<(u8, Ipv4Addr, Ipv4Addr, Option<&[u8]>)> {
    let h = packet.get(..20)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    let l4 = (offset == 0).then(|| packet.get(ihl..)).flatten();
    Some((h[9], src, dst, l4))
}

fn ports(proto: u8, l4: Option<&[u8]>) -> Option<(u16, u16)> {
    match proto {
        TCP | UDP => {
            let l4 = l4?.get(..4)?;
            Some((
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            ))
        }
        ICMP => {
            let l4 = l4?.get(..8)?;
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            Some((id, id))
        }
        _ => Some((0, 0)),
    }
}

impl FlowKey {
    /// The flow a packet into a site belongs to (its source opened it).
    pub fn into_site(packet: &[u8]) -> Option<FlowKey> {
        let (proto, src, dst, l4) = parts(packet)?;
        // An ICMP echo reply into a site answers the site's own ping.
        if proto == ICMP && l4?.first() != Some(&8) {
            return None;
        }
        let (sport, dport) = ports(proto, l4)?;
        Some(FlowKey {
            proto,
            opener: (src, sport),
            site: (dst, dport),
        })
    }

    /// The flow a packet from a site answers, if it is an answer: the
    /// reversed tuple, or for an ICMP error the packet it quotes.
    pub fn answered_by(packet: &[u8]) -> Option<FlowKey> {
        let (proto, src, dst, l4) = parts(packet)?;
        if proto == ICMP {
            match l4?.first()? {
                0 => {}
                // Unreachable, time exceeded, parameter problem: the
                // quoted packet is the one the opener sent.
                3 | 11 | 12 => return FlowKey::into_site(l4?.get(8..)?),
                _ => return None,
            }
        }
        let (sport, dport) = ports(proto, l4)?;
        Some(FlowKey {
            proto,
            opener: (dst, dport),
            site: (src, sport),
        })
    }
}

struct Table {
    /// Flow -> seconds since `epoch` of its last packet into the site.
    flows: HashMap<FlowKey, u32>,
    last_sweep: Instant,
}

/// The flows opened into client networks.
pub struct InboundFlows {
    epoch: Instant,
    table: Mutex<Table>,
}

impl Default for InboundFlows {
    fn default() -> Self {
        let epoch = Instant::now();
        InboundFlows {
            epoch,
            table: Mutex::new(Table {
                flows: HashMap::new(),
                last_sweep: epoch,
            }),
        }
    }
}

impl InboundFlows {
    fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// Remembers (or refreshes) the flow of `packet`, an IPv4 packet on
    /// its way into a site. False: the table is full of live flows.
    pub fn record(&self, packet: &[u8]) -> bool {
        let Some(key) = FlowKey::into_site(packet) else {
            return true;
        };
        let now = self.now();
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seen) = t.flows.get_mut(&key) {
            *seen = now;
            return true;
        }
        if t.flows.len() >= MAX_FLOWS {
            if t.last_sweep.elapsed() < SWEEP_INTERVAL {
                return false;
            }
            t.last_sweep = Instant::now();
            let idle = IDLE.as_secs() as u32;
            t.flows.retain(|_, seen| now.saturating_sub(*seen) < idle);
            if t.flows.len() >= MAX_FLOWS {
                return false;
            }
        }
        t.flows.insert(key, now);
        true
    }

    /// True if `packet`, an IPv4 packet from a site, answers a flow
    /// opened into it that is not idle.
    pub fn answers(&self, packet: &[u8]) -> bool {
        let Some(key) = FlowKey::answered_by(packet) else {
            return false;
        };
        let now = self.now();
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.flows
            .get(&key)
            .is_some_and(|seen| now.saturating_sub(*seen) < IDLE.as_secs() as u32)
    }

    /// Flows remembered now.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flows
            .len()
    }

    /// No flow remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 packet: protocol, source, destination, then `l4`.
    fn ip(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut l4 = [0u8; 20];
        l4[..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        ip(TCP, src, dst, &l4)
    }

    fn icmp(kind: u8, id: u16, src: [u8; 4], dst: [u8; 4], rest: &[u8]) -> Vec<u8> {
        let mut l4 = vec![kind, 0, 0, 0];
        l4.extend_from_slice(&id.to_be_bytes());
        l4.extend_from_slice(&[0, 1]);
        l4.extend_from_slice(rest);
        ip(ICMP, src, dst, &l4)
    }

    const LAPTOP: [u8; 4] = [10, 250, 0, 3];
    const HOST_B: [u8; 4] = [10, 42, 0, 5];

    #[test]
    fn a_site_answers_only_flows_opened_into_it() {
        let t = InboundFlows::default();
        assert!(
            !t.answers(&tcp(HOST_B, 22, LAPTOP, 40000)),
            "nothing opened yet"
        );
        assert!(t.record(&tcp(LAPTOP, 40000, HOST_B, 22)));
        assert!(t.answers(&tcp(HOST_B, 22, LAPTOP, 40000)));
        // The same hosts, another port: the site would open a new flow.
        assert!(!t.answers(&tcp(HOST_B, 22, LAPTOP, 40001)));
        assert!(!t.answers(&tcp(HOST_B, 23, LAPTOP, 40000)));
        // A UDP packet with the TCP flow's ports is another flow.
        let mut udp = tcp(HOST_B, 22, LAPTOP, 40000);
        udp[9] = UDP;
        assert!(!t.answers(&udp));
    }

    #[test]
    fn pings_and_icmp_errors() {
        let t = InboundFlows::default();
        assert!(t.record(&icmp(8, 77, LAPTOP, HOST_B, &[])));
        assert!(t.answers(&icmp(0, 77, HOST_B, LAPTOP, &[])));
        assert!(!t.answers(&icmp(0, 78, HOST_B, LAPTOP, &[])));
        // The site's echo request is never an answer.
        assert!(!t.answers(&icmp(8, 77, HOST_B, LAPTOP, &[])));
        // An echo reply into the site opens nothing.
        assert!(t.record(&icmp(0, 90, LAPTOP, HOST_B, &[])));
        assert!(!t.answers(&icmp(8, 90, HOST_B, LAPTOP, &[])));
        // Port unreachable from a router in the site, quoting the
        // laptop's datagram.
        let opened = tcp(LAPTOP, 5000, HOST_B, 53);
        assert!(t.record(&opened));
        let err = icmp(3, 0, [10, 42, 0, 1], LAPTOP, &opened[..28]);
        assert!(t.answers(&err));
        let other = tcp(LAPTOP, 5001, HOST_B, 53);
        assert!(!t.answers(&icmp(3, 0, [10, 42, 0, 1], LAPTOP, &other[..28])));
    }

    #[test]
    fn truncated_and_later_fragments_answer_nothing() {
        let t = InboundFlows::default();
        assert!(t.record(&tcp(LAPTOP, 40000, HOST_B, 22)));
        let answer = tcp(HOST_B, 22, LAPTOP, 40000);
        assert!(!t.answers(&answer[..21]));
        assert!(!t.answers(&answer[..10]));
        let mut later = answer.clone();
        later[7] = 10; // fragment offset 80 bytes: no ports in it
        assert!(!t.answers(&later));
    }

    #[test]
    fn the_table_is_bounded() {
        let t = InboundFlows::default();
        for port in 0..MAX_FLOWS {
            let p = port as u32;
            let src = [10, 250, (p >> 16) as u8, (p >> 8) as u8];
            assert!(t.record(&tcp(src, p as u16, HOST_B, 22)));
        }
        assert_eq!(t.len(), MAX_FLOWS);
        assert!(!t.record(&tcp(LAPTOP, 1, HOST_B, 23)), "full of live flows");
        assert!(!t.answers(&tcp(HOST_B, 23, LAPTOP, 1)));
        // A flow already there is still refreshed.
        assert!(t.record(&tcp([10, 250, 0, 0], 0, HOST_B, 22)));
    }
}
