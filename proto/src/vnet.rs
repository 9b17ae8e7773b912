//! The virtio-net header every packet frame starts with: the offload
//! metadata Linux tun devices with IFF_VNET_HDR exchange (checksum to
//! complete, TCP/UDP segmentation of a large packet). Carrying it through
//! the tunnel lets a 64 KB TCP segment cross as one frame and be segmented
//! (or never segmented) by the kernel at the other end.

/// Length of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;

/// A header that asks nothing: a complete, checksummed packet.
pub const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Where TCP and UDP keep their checksums in their headers.
const TCP_CSUM_OFFSET: u16 = 16;
const UDP_CSUM_OFFSET: u16 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Fields are in the host's byte order (little endian on every Linux
    /// host cvpn runs on), as the kernel writes them for a tun device.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Whether the header is one the kernel may be handed with `packet`,
    /// an IPv4 packet whose header length and total length were checked:
    /// the checksum to complete starts at the L4 header and sits where TCP
    /// or UDP keep theirs; segmentation matches the IP protocol, has a
    /// segment size and headers inside the packet.
    pub fn is_sane(&self, packet: &[u8]) -> bool {
        let (Some(&first), Some(&protocol)) = (packet.first(), packet.get(9)) else {
            return false;
        };
        let l4_start = usize::from(first & 0x0f) * 4;
        if self.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return false;
        }
        let needs_csum = self.flags & F_NEEDS_CSUM != 0;
        if needs_csum {
            let at_l4 = usize::from(self.csum_start) == l4_start;
            let offset_fits = match protocol {
                IPPROTO_TCP => self.csum_offset == TCP_CSUM_OFFSET,
                IPPROTO_UDP => self.csum_offset == UDP_CSUM_OFFSET,
                _ => false,
            };
            let end = l4_start + usize::from(self.csum_offset) + 2;
            if !at_l4 || !offset_fits || end > packet.len() {
                return false;
            }
        }
        let segmented = |proto: u8| {
            protocol == proto
                && needs_csum
                && self.gso_size > 0
                && usize::from(self.hdr_len) <= packet.len()
        };
        match self.gso_type {
            GSO_NONE => true,
            // ECN only qualifies TCP segmentation.
            t if t == GSO_TCPV4 || t == GSO_TCPV4 | GSO_ECN => segmented(IPPROTO_TCP),
            GSO_UDP_L4 => segmented(IPPROTO_UDP),
            _ => false,
        }
    }
}

/// Splits a packet frame's payload into its header and the IP packet.
pub fn split(payload: &[u8]) -> Option<(VnetHdr, &[u8])> {
    let hdr = VnetHdr::parse(payload)?;
    Some((hdr, &payload[VNET_HDR_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, cs: u16, co: u16) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0] = flags;
        b[1] = gso_type;
        b[2..4].copy_from_slice(&hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&cs.to_le_bytes());
        b[8..10].copy_from_slice(&co.to_le_bytes());
        b
    }

    /// An IPv4 packet of `len` bytes (20-byte header) carrying `proto`.
    fn ipv4(proto: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[9] = proto;
        p
    }

    #[test]
    fn tcp_segmentation_header() {
        let h = VnetHdr::parse(&hdr(F_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16)).unwrap();
        assert_eq!((h.gso_size, h.csum_start, h.csum_offset), (1448, 20, 16));
        assert!(h.is_sane(&ipv4(6, 65_000)));
        let ecn = VnetHdr::parse(&hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 52, 1448, 20, 16));
        assert!(ecn.unwrap().is_sane(&ipv4(6, 65_000)));
        let udp = VnetHdr::parse(&hdr(F_NEEDS_CSUM, GSO_UDP_L4, 28, 1400, 20, 6)).unwrap();
        assert!(udp.is_sane(&ipv4(17, 30_000)));
        let csum = VnetHdr::parse(&hdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6)).unwrap();
        assert!(csum.is_sane(&ipv4(17, 100)));
        assert!(VnetHdr::parse(&PLAIN).unwrap().is_sane(&ipv4(1, 20)));
    }

    #[test]
    fn hostile_headers_are_refused() {
        let tcp = ipv4(6, 64);
        for (bad, packet) in [
            (hdr(0x10, GSO_NONE, 0, 0, 0, 0), &tcp), // unknown flag
            (hdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 60, 16), &tcp), // checksum not at L4
            (hdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 50), &tcp), // past the end
            (hdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6), &tcp), // UDP's offset for TCP
            (hdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16), &ipv4(1, 64)), // ICMP
            (hdr(F_NEEDS_CSUM, GSO_TCPV4, 52, 0, 20, 16), &tcp), // no segment size
            (hdr(F_NEEDS_CSUM, GSO_TCPV4, 9000, 1448, 20, 16), &tcp), // headers past the end
            (
                hdr(F_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16),
                &ipv4(17, 64),
            ), // TCP GSO on UDP
            (hdr(F_NEEDS_CSUM, GSO_UDP_L4, 28, 1400, 20, 6), &tcp), // UDP GSO on TCP
            (
                hdr(F_NEEDS_CSUM, GSO_UDP_L4 | GSO_ECN, 28, 9, 20, 6),
                &ipv4(17, 64),
            ), // ECN on UDP
            (hdr(F_NEEDS_CSUM, 4, 52, 1448, 20, 16), &tcp), // TCPv6 on an IPv4 tunnel
            (hdr(0, GSO_TCPV4, 52, 1448, 20, 16), &tcp), // segmentation without checksum offload
            (PLAIN, &Vec::new()),                    // no packet at all
        ] {
            assert!(
                !VnetHdr::parse(&bad).unwrap().is_sane(packet),
                "{bad:?} accepted"
            );
        }
        assert!(VnetHdr::parse(&[0; 9]).is_none());
    }
}
