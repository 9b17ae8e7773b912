//! Turns what the tun device hands over with its offloads (a virtio-net
//! header, a checksum left to complete, a TCP or UDP train of up to 64 KB)
//! into plain IPv4 packets, for clients whose protocol carries packets
//! only (OpenVPN). cvpn/1 carries the header itself and never needs this.

use cvpn_proto::VNET_HDR_LEN;
use cvpn_proto::vnet::{F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_UDP_L4, VnetHdr};

const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Ones'-complement sum of `data`, not folded.
pub(crate) fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits and complements it: the checksum field's value
/// (0 when `acc` sums a whole packet whose checksum is right).
pub(crate) fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Writes the checksum of an IPv4 header (its own field zeroed first).
pub(crate) fn ipv4_checksum(header: &mut [u8]) {
    header[10..12].copy_from_slice(&[0, 0]);
    let c = fold(sum(0, header));
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Computes the TCP or UDP checksum of `l4` (its field zeroed first) with
/// the pseudo-header of `ip`.
fn l4_checksum(ip: &[u8], l4: &mut [u8], protocol: u8) {
    let field = if protocol == TCP { 16 } else { 6 };
    if l4.len() < field + 2 {
        return;
    }
    l4[field..field + 2].copy_from_slice(&[0, 0]);
    let mut acc = sum(0, &ip[12..20]);
    acc += u32::from(protocol) + l4.len() as u32;
    let mut c = fold(sum(acc, l4));
    if protocol == UDP && c == 0 {
        c = 0xffff;
    }
    l4[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Hands each plain packet `frame` (virtio-net header and IPv4 packet)
/// stands for to `each`, completing checksums; `scratch` holds one
/// segment at a time. Returns false for a frame it cannot take apart
/// (dropped: an offload the tun device was not asked for, or headers
/// beyond the packet).
pub fn plain_packets(frame: &[u8], scratch: &mut Vec<u8>, mut each: impl FnMut(&[u8])) -> bool {
    let (Some(hdr), Some(packet)) = (VnetHdr::parse(frame), frame.get(VNET_HDR_LEN..)) else {
        return false;
    };
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE && hdr.flags & F_NEEDS_CSUM == 0 {
        each(packet);
        return true;
    }
    let Some(&first) = packet.first() else {
        return false;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || packet.len() < ihl + 8 {
        return false;
    }
    let protocol = packet[9];
    if gso == GSO_NONE {
        scratch.clear();
        scratch.extend_from_slice(packet);
        let (ip, l4) = scratch.split_at_mut(ihl);
        if protocol == TCP || protocol == UDP {
            l4_checksum(ip, l4, protocol);
        }
        each(scratch);
        return true;
    }
    let l4_len = match (gso, protocol) {
        (GSO_TCPV4, TCP) => match packet.get(ihl + 12) {
            Some(off) => usize::from(off >> 4) * 4,
            None => return false,
        },
        (GSO_UDP_L4, UDP) => 8,
        _ => return false,
    };
    let headers = ihl + l4_len;
    let mss = usize::from(hdr.gso_size);
    if l4_len < 8 || packet.len() < headers || mss == 0 {
        return false;
    }
    let payload = &packet[headers..];
    let n = payload.len().div_ceil(mss).max(1);
    let id = u16::from_be_bytes([packet[4], packet[5]]);
    let seq = u32::from_be_bytes([
        packet[ihl + 4],
        packet[ihl + 5],
        packet[ihl + 6],
        packet[ihl + 7],
    ]);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(&packet[..headers]);
        scratch.extend_from_slice(chunk);
        let total = scratch.len();
        let (ip, l4) = scratch.split_at_mut(ihl);
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        ipv4_checksum(ip);
        if protocol == TCP {
            let offset = (i * mss) as u32;
            l4[4..8].copy_from_slice(&seq.wrapping_add(offset).to_be_bytes());
            if i + 1 < n {
                l4[13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                l4[13] &= !TCP_CWR;
            }
        } else {
            let len = (l4_len + chunk.len()) as u16;
            l4[4..6].copy_from_slice(&len.to_be_bytes());
        }
        l4_checksum(ip, l4, protocol);
        each(scratch);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP train: IPv4 + TCP headers, `len` bytes of payload, a partial
    /// checksum as the kernel leaves it.
    fn train(len: usize, mss: u16, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN + 40 + len];
        f[0] = F_NEEDS_CSUM;
        f[1] = GSO_TCPV4;
        f[2..4].copy_from_slice(&40u16.to_le_bytes());
        f[4..6].copy_from_slice(&mss.to_le_bytes());
        f[6..8].copy_from_slice(&20u16.to_le_bytes());
        f[8..10].copy_from_slice(&16u16.to_le_bytes());
        let p = &mut f[VNET_HDR_LEN..];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((40 + len) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&[0xff, 0xfe]);
        p[8] = 64;
        p[9] = TCP;
        p[12..16].copy_from_slice(&[192, 168, 1, 20]);
        p[16..20].copy_from_slice(&[10, 250, 0, 2]);
        p[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[36..38].copy_from_slice(&[0x12, 0x34]);
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    fn valid(p: &[u8]) -> bool {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let mut acc = sum(0, &p[12..20]);
        acc += u32::from(p[9]) + (p.len() - ihl) as u32;
        fold(sum(0, &p[..ihl])) == 0 && fold(sum(acc, &p[ihl..])) == 0
    }

    #[test]
    fn a_tcp_train_becomes_mss_sized_segments() {
        let frame = train(3000, 1400, TCP_FIN | TCP_PSH | TCP_CWR | 0x10);
        let mut out = Vec::new();
        assert!(plain_packets(&frame, &mut Vec::new(), |p| out.push(p.to_vec())));
        let lens: Vec<usize> = out.iter().map(Vec::len).collect();
        assert_eq!(lens, [1440, 1440, 240]);
        let mut data = Vec::new();
        for (i, p) in out.iter().enumerate() {
            assert!(valid(p), "segment {i}");
            assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
            assert_eq!(
                u16::from_be_bytes([p[4], p[5]]),
                0xfffe_u16.wrapping_add(i as u16)
            );
            let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
            assert_eq!(seq, u32::MAX.wrapping_add(1400 * i as u32));
            let flags = p[33];
            assert_eq!(flags & TCP_FIN != 0, i == 2);
            assert_eq!(flags & TCP_CWR != 0, i == 0);
            data.extend_from_slice(&p[40..]);
        }
        assert_eq!(data, frame[VNET_HDR_LEN + 40..]);
    }

    #[test]
    fn a_checksum_left_to_complete_is_completed() {
        let mut frame = train(100, 0, 0x18);
        frame[1] = GSO_NONE;
        frame[VNET_HDR_LEN + 2..VNET_HDR_LEN + 4].copy_from_slice(&140u16.to_be_bytes());
        ipv4_checksum(&mut frame[VNET_HDR_LEN..VNET_HDR_LEN + 20]);
        let mut out = Vec::new();
        assert!(plain_packets(&frame, &mut Vec::new(), |p| out.push(p.to_vec())));
        assert_eq!(out.len(), 1);
        assert!(valid(&out[0]));
        // A plain packet passes untouched; nonsense is refused.
        let plain = [0u8; VNET_HDR_LEN + 20];
        let mut n = 0;
        assert!(plain_packets(&plain, &mut Vec::new(), |_| n += 1));
        assert_eq!(n, 1);
        let mut bad = train(100, 1400, 0);
        bad[VNET_HDR_LEN + 9] = UDP;
        bad[1] = GSO_TCPV4;
        assert!(!plain_packets(&bad, &mut Vec::new(), |_| panic!()));
        assert!(!plain_packets(&[1, 2], &mut Vec::new(), |_| panic!()));
    }

    #[test]
    fn a_udp_train_becomes_datagrams() {
        let mut f = vec![0u8; VNET_HDR_LEN + 28 + 2500];
        f[0] = F_NEEDS_CSUM;
        f[1] = GSO_UDP_L4;
        f[4..6].copy_from_slice(&1000u16.to_le_bytes());
        let p = &mut f[VNET_HDR_LEN..];
        p[0] = 0x45;
        p[9] = UDP;
        p[12..16].copy_from_slice(&[192, 168, 1, 20]);
        p[16..20].copy_from_slice(&[10, 250, 0, 2]);
        let mut out = Vec::new();
        assert!(plain_packets(&f, &mut Vec::new(), |p| out.push(p.to_vec())));
        let lens: Vec<usize> = out.iter().map(Vec::len).collect();
        assert_eq!(lens, [1028, 1028, 528]);
        for p in &out {
            assert!(valid(p));
            assert_eq!(
                usize::from(u16::from_be_bytes([p[24], p[25]])),
                p.len() - 20
            );
        }
    }
}
