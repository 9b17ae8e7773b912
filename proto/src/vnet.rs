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

    /// Whether the header is one the kernel may be handed for an IPv4
    /// packet of `packet_len` bytes: a known GSO type with a segment size,
    /// and checksum offsets inside the packet.
    pub fn is_sane(&self, packet_len: usize) -> bool {
        if self.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return false;
        }
        if self.flags & F_NEEDS_CSUM != 0 {
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > packet_len {
                return false;
            }
        }
        match self.gso_type & !GSO_ECN {
            GSO_NONE => true,
            GSO_TCPV4 | GSO_UDP_L4 => {
                self.gso_size > 0
                    && usize::from(self.hdr_len) <= packet_len
                    && self.flags & F_NEEDS_CSUM != 0
            }
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

    #[test]
    fn tcp_segmentation_header() {
        let h = VnetHdr::parse(&hdr(F_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16)).unwrap();
        assert_eq!((h.gso_size, h.csum_start, h.csum_offset), (1448, 20, 16));
        assert!(h.is_sane(65_000));
        assert!(VnetHdr::parse(&PLAIN).unwrap().is_sane(20));
    }

    #[test]
    fn hostile_headers_are_refused() {
        for bad in [
            hdr(0x10, GSO_NONE, 0, 0, 0, 0),                  // unknown flag
            hdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 60, 16),        // checksum past the end
            hdr(F_NEEDS_CSUM, GSO_TCPV4, 52, 0, 20, 16),      // no segment size
            hdr(F_NEEDS_CSUM, GSO_TCPV4, 9000, 1448, 20, 16), // headers past the end
            hdr(F_NEEDS_CSUM, 4, 52, 1448, 20, 16),           // TCPv6 on an IPv4 tunnel
            hdr(0, GSO_TCPV4, 52, 1448, 20, 16), // segmentation without checksum offload
        ] {
            assert!(
                !VnetHdr::parse(&bad).unwrap().is_sane(64),
                "{bad:?} accepted"
            );
        }
        assert!(VnetHdr::parse(&[0; 9]).is_none());
    }
}
