use netlink_packet_core::{DefaultNla, NLA_F_NESTED, NetlinkHeader};
use netlink_packet_netfilter::conntrack::Protocol;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterProtoFamily};

use super::*;

fn endpoints(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<Tuple> {
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(Ipv4Addr::from(src).into()),
            IPTuple::DestinationAddress(Ipv4Addr::from(dst).into()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Tcp),
            ProtoTuple::SourcePort(sport),
            ProtoTuple::DestinationPort(dport),
        ]),
    ]
}

/// A CTA_COUNTERS_* attribute as the kernel nests it.
fn counters(kind: u16, packets: u64, bytes: u64) -> ConntrackAttribute {
    let mut v = Vec::new();
    for (k, x) in [(CTA_COUNTERS_PACKETS, packets), (CTA_COUNTERS_BYTES, bytes)] {
        v.extend_from_slice(&12u16.to_ne_bytes());
        v.extend_from_slice(&k.to_ne_bytes());
        v.extend_from_slice(&x.to_be_bytes());
    }
    ConntrackAttribute::Other(DefaultNla::new(kind | NLA_F_NESTED, v))
}

/// A client's TCP flow to 192.168.1.2:5432, SNATed to 192.168.1.1:61000.
fn message(msg: ConntrackMessage) -> Vec<u8> {
    let mut packet = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            msg,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn attrs(with_counters: bool) -> Vec<ConntrackAttribute> {
    let mut a = vec![
        ConntrackAttribute::CtaTupleOrig(endpoints(
            [10, 250, 0, 2],
            40_000,
            [192, 168, 1, 2],
            5432,
        )),
        ConntrackAttribute::CtaTupleReply(endpoints(
            [192, 168, 1, 2],
            5432,
            [192, 168, 1, 1],
            61_000,
        )),
        ConntrackAttribute::Other(DefaultNla::new(CTA_ID, 77u32.to_be_bytes().to_vec())),
    ];
    if with_counters {
        a.push(counters(CTA_COUNTERS_ORIG, 10, 1_000));
        a.push(counters(CTA_COUNTERS_REPLY, 5, 300));
    }
    a
}

fn expected_flow() -> Flow {
    Flow {
        pkt_src: (Ipv4Addr::new(10, 250, 0, 2), 40_000),
        dst: (Ipv4Addr::new(192, 168, 1, 2), 5432),
        real_dst: (Ipv4Addr::new(192, 168, 1, 2), 5432),
        src: (Ipv4Addr::new(192, 168, 1, 1), 61_000),
        protocol: 6,
    }
}

#[test]
fn new_and_destroy_events_become_flow_events() {
    let mut buf = message(ConntrackMessage::New(attrs(false)));
    buf.extend(message(ConntrackMessage::Delete(attrs(true))));
    let events = parse(&buf);
    assert_eq!(
        events,
        vec![
            FlowEvent::Start {
                id: 77,
                flow: expected_flow()
            },
            FlowEvent::End {
                id: 77,
                flow: expected_flow(),
                packets: 15,
                bytes: 1_300
            }
        ]
    );
}

#[test]
fn malformed_and_partial_messages_are_skipped() {
    // No id: not a flow this log can follow.
    let mut no_id = attrs(false);
    no_id.retain(|a| !matches!(a, ConntrackAttribute::Other(_)));
    assert!(parse(&message(ConntrackMessage::New(no_id))).is_empty());
    // A cut message, garbage, and an absurd length end the parse cleanly.
    let whole = message(ConntrackMessage::New(attrs(false)));
    for cut in 0..whole.len() {
        assert!(parse(&whole[..cut]).len() <= 1);
    }
    assert!(parse(&[0xff; 64]).is_empty());
    let mut huge = whole.clone();
    huge[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert!(parse(&huge).is_empty());
}
