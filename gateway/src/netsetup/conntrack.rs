//! The flow log's source: the kernel's conntrack events (new and destroy)
//! on a NETLINK_NETFILTER socket, turned into [`FlowEvent`]s. Destroy
//! events carry the flow's counters when `net.netfilter.nf_conntrack_acct`
//! is on (the gateway turns it on while it keeps a flow log).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use netlink_packet_core::{NLA_TYPE_MASK, NetlinkMessage, NetlinkPayload, Nla, NlasIterator};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use tracing::warn;

use crate::endpoint::Endpoint;
use crate::endpoint::flowlog::{Flow, FlowEvent, FlowTracker};
use crate::endpoint::jsonlog::JsonLog;

const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
/// Room for bursts of events while the log is written: past it the kernel
/// drops events and the socket reports ENOBUFS (counted). Each event is
/// its own buffer of about 1 KiB in the kernel's accounting, so this holds
/// some 60,000: a client's flood of new flows (tens of thousands a second)
/// on a busy host. Only what is queued is charged.
const RECEIVE_BUFFER: usize = 64 << 20;
/// Lost events are counted each time, and logged at most this often.
const OVERRUN_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// A socket subscribed to conntrack's new and destroy events of this
/// network namespace.
pub fn subscribe() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.add_membership(NFNLGRP_CONNTRACK_NEW)?;
    socket.add_membership(NFNLGRP_CONNTRACK_DESTROY)?;
    // The forced size ignores net.core.rmem_max (the gateway has
    // CAP_NET_ADMIN); the plain one is the fallback.
    let size = RECEIVE_BUFFER;
    if nix::sys::socket::setsockopt(
        &socket.as_fd(),
        nix::sys::socket::sockopt::RcvBufForce,
        &size,
    )
    .is_err()
    {
        socket.set_rx_buf_sz(size)?;
    }
    Ok(socket)
}

/// Reads events from `socket` for as long as the process runs, writing
/// the flow log lines to `log`.
pub fn run(socket: Socket, ep: Arc<Endpoint>, log: Arc<JsonLog>) {
    let mut tracker = FlowTracker::default();
    let mut buf = vec![0u8; 1 << 16];
    let mut warned: Option<Instant> = None;
    // Summaries are due even while no event comes.
    let wake = nix::sys::time::TimeVal::new(1, 0);
    if let Err(e) = nix::sys::socket::setsockopt(
        &socket.as_fd(),
        nix::sys::socket::sockopt::ReceiveTimeout,
        &wake,
    ) {
        warn!(error = %e, "conntrack events: no receive timeout (summaries wait for events)");
    }
    loop {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        tracker.budgets.set_rate(ep.config().flow_log_rate);
        for line in tracker.budgets.summaries(now) {
            log.write(&line);
        }
        ep.tally
            .flow_log_suppressed
            .store(tracker.suppressed(), Ordering::Relaxed);
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                ep.tally.flow_log_overruns.fetch_add(1, Ordering::Relaxed);
                // Under a sustained flood, one line per interval.
                if warned.is_none_or(|t| t.elapsed() >= OVERRUN_WARNING_INTERVAL) {
                    warn!("conntrack events were lost (the flow log fell behind)");
                    warned = Some(Instant::now());
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(error = %e, "conntrack events: the flow log stops");
                return;
            }
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for event in parse(&buf[..n]) {
            if let Some(line) = tracker.line(event, now, |f| ep.attribute_flow(f)) {
                log.write(&line);
            }
        }
    }
}

/// The IPv4 flow events in one datagram of netlink messages; anything
/// else (other families, malformed messages) is skipped.
pub fn parse(mut buf: &[u8]) -> Vec<FlowEvent> {
    let mut events = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        if let Some(e) = event(&buf[..len]) {
            events.push(e);
        }
        buf = &buf[(len.next_multiple_of(4)).min(buf.len())..];
    }
    events
}

fn event(message: &[u8]) -> Option<FlowEvent> {
    let msg = NetlinkMessage::<NetfilterMessage>::deserialize(message).ok()?;
    let NetlinkPayload::InnerMessage(nf) = msg.payload else {
        return None;
    };
    let NetfilterMessageInner::Conntrack(ct) = nf.inner else {
        return None;
    };
    match ct {
        ConntrackMessage::New(attrs) => {
            let (id, flow, _) = fields(&attrs)?;
            Some(FlowEvent::Start { id, flow })
        }
        ConntrackMessage::Delete(attrs) => {
            let (id, flow, (packets, bytes)) = fields(&attrs)?;
            Some(FlowEvent::End {
                id,
                flow,
                packets,
                bytes,
            })
        }
        _ => None,
    }
}

/// The id, the flow, and the counters (both directions) of a message.
fn fields(attrs: &[ConntrackAttribute]) -> Option<(u32, Flow, (u64, u64))> {
    let (mut id, mut orig, mut reply, mut counters) = (None, None, None, (0, 0));
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            ConntrackAttribute::Other(nla) => {
                let value = value_of(nla);
                match nla.kind() & NLA_TYPE_MASK {
                    CTA_ID => {
                        id = value
                            .get(..4)
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    }
                    CTA_COUNTERS_ORIG | CTA_COUNTERS_REPLY => {
                        let (p, b) = counter_values(&value);
                        counters = (counters.0 + p, counters.1 + b);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let (orig, reply) = (orig?, reply?);
    let flow = Flow {
        pkt_src: (orig.src, orig.src_port),
        dst: (orig.dst, orig.dst_port),
        real_dst: (reply.src, reply.src_port),
        src: (reply.dst, reply.dst_port),
        protocol: orig.protocol,
    };
    Some((id?, flow, counters))
}

struct Endpoints {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
}

fn tuple(parts: &[Tuple]) -> Option<Endpoints> {
    let (mut src, mut dst, mut src_port, mut dst_port, mut protocol) = (None, None, 0, 0, None);
    for part in parts {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(IpAddr::V4(a)) => src = Some(*a),
                        IPTuple::DestinationAddress(IpAddr::V4(a)) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(n) => protocol = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => src_port = *n,
                        ProtoTuple::DestinationPort(n) => dst_port = *n,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Endpoints {
        src: src?,
        dst: dst?,
        src_port,
        dst_port,
        protocol: protocol?,
    })
}

fn value_of(nla: &impl Nla) -> Vec<u8> {
    let mut v = vec![0u8; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

/// Packets and bytes of a CTA_COUNTERS_* attribute.
fn counter_values(nested: &[u8]) -> (u64, u64) {
    let (mut packets, mut bytes) = (0, 0);
    for nla in NlasIterator::new(nested).flatten() {
        let Some(v) = nla.value().get(..8) else {
            continue;
        };
        let v = u64::from_be_bytes(v.try_into().unwrap_or_default());
        match nla.kind() & NLA_TYPE_MASK {
            CTA_COUNTERS_PACKETS => packets = v,
            CTA_COUNTERS_BYTES => bytes = v,
            _ => {}
        }
    }
    (packets, bytes)
}

#[cfg(test)]
#[path = "conntrack_tests.rs"]
mod tests;
