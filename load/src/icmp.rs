//! The probe each session sends: an ICMP echo request from its tunnel
//! address, and the check that the reply came back to the same session.

use std::net::Ipv4Addr;

use pnet_packet::util::checksum;

pub const ECHO_LEN: usize = 20 + 8 + 16;
/// A frame's payload: a plain virtio-net header, then the echo request.
pub const FRAME_LEN: usize = cvpn_proto::VNET_HDR_LEN + ECHO_LEN;

/// A frame payload: a plain virtio-net header and an IPv4 ICMP echo
/// request `src -> dst` with identifier `id`.
pub fn echo_frame(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> [u8; FRAME_LEN] {
    let mut frame = [0u8; FRAME_LEN];
    frame[cvpn_proto::VNET_HDR_LEN..].copy_from_slice(&echo_request(src, dst, id, seq));
    frame
}

/// An IPv4 ICMP echo request `src -> dst` with identifier `id`.
pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> [u8; ECHO_LEN] {
    let mut p = [0u8; ECHO_LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(ECHO_LEN as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&p[..20], 5);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&id.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    p[28..].copy_from_slice(b"cvpn-load probe!");
    let sum = checksum(&p[20..], 1);
    p[22..24].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Whether `packet` is the echo reply to `id`/`seq` addressed to `me`.
pub fn is_echo_reply(packet: &[u8], me: Ipv4Addr, id: u16, seq: u16) -> bool {
    packet.len() >= 28
        && packet[0] >> 4 == 4
        && packet[9] == 1
        && packet[16..20] == me.octets()
        && {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            packet.len() >= ihl + 8
                && packet[ihl] == 0
                && packet[ihl + 4..ihl + 6] == id.to_be_bytes()
                && packet[ihl + 6..ihl + 8] == seq.to_be_bytes()
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_and_replies_match() {
        let me = Ipv4Addr::new(10, 250, 0, 2);
        let p = echo_request(me, Ipv4Addr::new(192, 168, 1, 20), 7, 1);
        // Summed with their checksums included, valid headers come to zero.
        assert_eq!(checksum(&p[..20], 99), 0);
        assert_eq!(checksum(&p[20..], 99), 0);
        let mut reply = p;
        reply[12..16].copy_from_slice(&[192, 168, 1, 20]);
        reply[16..20].copy_from_slice(&me.octets());
        reply[20] = 0;
        assert!(is_echo_reply(&reply, me, 7, 1));
        assert!(!is_echo_reply(&reply, me, 8, 1));
        assert!(!is_echo_reply(&p, me, 7, 1));
    }
}
