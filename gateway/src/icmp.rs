//! ICMP destination-unreachable replies for packets the policy refuses, so a
//! denied `ping` or `curl` fails at once instead of timing out. Built with
//! pnet into a caller's stack buffer: no allocation.

use std::net::Ipv4Addr;

use pnet_packet::Packet;
use pnet_packet::icmp::destination_unreachable::{IcmpCodes, MutableDestinationUnreachablePacket};
use pnet_packet::icmp::{IcmpCode, IcmpPacket, IcmpTypes, checksum as icmp_checksum};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{Ipv4Packet, MutableIpv4Packet, checksum as ip_checksum};

/// IPv4 header (20) + ICMP header (8) + quoted header (up to 60) + 8 bytes.
pub const MAX_REPLY: usize = 20 + 8 + 60 + 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    Net,
    AdminProhibited,
}

impl Unreachable {
    fn code(self) -> IcmpCode {
        match self {
            Unreachable::Net => IcmpCodes::DestinationNetworkUnreachable,
            Unreachable::AdminProhibited => IcmpCodes::CommunicationAdministrativelyProhibited,
        }
    }
}

/// Writes into `out` the ICMP error `kind` answering `orig`, from `from`,
/// and returns its length. None when RFC 1122 forbids an answer: `orig` is
/// itself an ICMP error, a non-first fragment, or unparsable.
pub fn unreachable(
    out: &mut [u8; MAX_REPLY],
    orig: &[u8],
    from: Ipv4Addr,
    kind: Unreachable,
) -> Option<usize> {
    let ip = Ipv4Packet::new(orig)?;
    let ihl = usize::from(ip.get_header_length()) * 4;
    if ihl < 20 || orig.len() < ihl || ip.get_fragment_offset() != 0 {
        return None;
    }
    if ip.get_next_level_protocol() == IpNextHeaderProtocols::Icmp {
        let icmp = IcmpPacket::new(&orig[ihl..])?;
        let t = icmp.get_icmp_type();
        if t != IcmpTypes::EchoRequest && t != IcmpTypes::EchoReply {
            return None;
        }
    }
    let quoted = &orig[..(ihl + 8).min(orig.len())];
    let total = 20 + 8 + quoted.len();
    let buf = &mut out[..total];
    buf.fill(0);
    {
        let mut icmp = MutableDestinationUnreachablePacket::new(&mut buf[20..])?;
        icmp.set_icmp_type(IcmpTypes::DestinationUnreachable);
        icmp.set_icmp_code(kind.code());
        icmp.set_payload(quoted);
    }
    let sum = icmp_checksum(&IcmpPacket::new(&buf[20..])?);
    buf[22..24].copy_from_slice(&sum.to_be_bytes());
    let mut reply = MutableIpv4Packet::new(buf)?;
    reply.set_version(4);
    reply.set_header_length(5);
    reply.set_dscp(48 >> 2);
    reply.set_total_length(total as u16);
    reply.set_ttl(64);
    reply.set_next_level_protocol(IpNextHeaderProtocols::Icmp);
    reply.set_source(from);
    reply.set_destination(ip.get_source());
    let sum = ip_checksum(&reply.to_immutable());
    reply.set_checksum(sum);
    debug_assert_eq!(reply.packet().len(), total);
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_packet() -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 250, 0, 2]);
        p[16..20].copy_from_slice(&[192, 168, 1, 5]);
        let sum = ip_checksum(&Ipv4Packet::new(&p).unwrap());
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    #[test]
    fn admin_prohibited_reply() {
        let orig = udp_packet();
        let mut out = [0u8; MAX_REPLY];
        let gw = Ipv4Addr::new(10, 250, 0, 1);
        let n = unreachable(&mut out, &orig, gw, Unreachable::AdminProhibited).unwrap();
        assert_eq!(n, 20 + 8 + 28);
        let ip = Ipv4Packet::new(&out[..n]).unwrap();
        assert_eq!(ip.get_source(), gw);
        assert_eq!(ip.get_destination(), Ipv4Addr::new(10, 250, 0, 2));
        assert_eq!(ip_checksum(&ip), ip.get_checksum());
        let icmp = IcmpPacket::new(ip.payload()).unwrap();
        assert_eq!(icmp.get_icmp_type(), IcmpTypes::DestinationUnreachable);
        assert_eq!(icmp.get_icmp_code(), IcmpCode(13));
        assert_eq!(icmp_checksum(&icmp), icmp.get_checksum());
        assert_eq!(&ip.payload()[8..], &orig[..28]);
    }

    #[test]
    fn never_answers_an_icmp_error_or_garbage() {
        let mut orig = udp_packet();
        orig[9] = 1;
        orig[20] = 3; // destination unreachable
        let mut out = [0u8; MAX_REPLY];
        let gw = Ipv4Addr::new(10, 250, 0, 1);
        assert_eq!(unreachable(&mut out, &orig, gw, Unreachable::Net), None);
        orig[20] = 8; // echo request: answered
        assert!(unreachable(&mut out, &orig, gw, Unreachable::Net).is_some());
        assert_eq!(
            unreachable(&mut out, &orig[..10], gw, Unreachable::Net),
            None
        );
        let mut bad_ihl = udp_packet();
        bad_ihl[0] = 0x4f;
        assert_eq!(unreachable(&mut out, &bad_ihl, gw, Unreachable::Net), None);
    }
}
