//! The virtio-net header check on any frame a client sends: it never
//! panics, and a header it passes asks the kernel only for what fits the
//! packet (checksum inside the L4 header, segmentation of the packet's own
//! protocol).
#![no_main]

use cvpn_proto::vnet::{self, F_NEEDS_CSUM, GSO_NONE, VnetHdr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((hdr, packet)) = vnet::split(data) else {
        return;
    };
    if !hdr.is_sane(packet) {
        return;
    }
    assert_eq!(VnetHdr::parse(data), Some(hdr));
    if hdr.flags & F_NEEDS_CSUM != 0 {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        assert_eq!(usize::from(hdr.csum_start), ihl);
        assert!(ihl + usize::from(hdr.csum_offset) + 2 <= packet.len());
        assert!(matches!(packet[9], 6 | 17));
    }
    if hdr.gso_type != GSO_NONE {
        assert!(hdr.gso_size > 0 && usize::from(hdr.hdr_len) <= packet.len());
    }
});
