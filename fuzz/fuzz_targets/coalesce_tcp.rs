//! The tun-side coalescer on segments built from the input (flows, gaps,
//! flags, IP ids, lengths, options, corrupted checksums) and raw packets:
//! it never panics, no frame exceeds an IPv4 packet, and what the kernel
//! cuts the frames back into (segment::plain_packets, as it does for
//! OpenVPN clients) is exactly what came in, in each flow's order.
#![no_main]

use cvpn_gw::inside::coalesce::Coalescer;
use cvpn_gw::inside::segment::plain_packets;
use libfuzzer_sys::fuzz_target;

const HDR: usize = 10;

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn sum(acc: u32, data: &[u8]) -> u32 {
    data.chunks(2).fold(acc, |a, c| {
        a + (u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
    })
}

/// A TCP segment from the 8 bytes of `p` (and `data` bytes of payload).
fn segment(p: &[u8], seq: &mut [u32; 4], id: &mut [u16; 4]) -> Vec<u8> {
    let flow = usize::from(p[0] & 3);
    let len = usize::from(u16::from_be_bytes([p[1], p[2]]) % 1500);
    let flags = if p[3] & 0x80 != 0 {
        p[4]
    } else {
        0x10 | (p[4] & 0x08)
    };
    let options = usize::from(p[5] & 3) * 4;
    let mut pkt = vec![0u8; HDR + 20 + 20 + options + len];
    let ip = &mut pkt[HDR..];
    let total = ip.len() as u16;
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id[flow].to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64 - (p[6] & 1);
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
    ip[16..20].copy_from_slice(&[192, 168, 1, 5]);
    let c = fold(sum(0, &ip[..20]));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut ip[20..];
    t[0..2].copy_from_slice(&(40000 + flow as u16).to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq[flow].to_be_bytes());
    t[12] = ((20 + options) as u8 / 4) << 4;
    t[13] = flags;
    t[14] = p[7] & 1;
    for b in t[20..].iter_mut() {
        *b = p[6];
    }
    let acc = sum(0, &ip[12..20]) + 6 + (ip.len() - 20) as u32;
    let c = fold(sum(acc, &ip[20..]));
    ip[36..38].copy_from_slice(&c.to_be_bytes());
    if p[3] & 0x40 != 0 {
        // Corrupted after the checksum.
        let last = pkt.len() - 1;
        pkt[last] ^= 1;
    }
    // Mostly in step; sometimes a gap or an id out of step.
    seq[flow] = seq[flow].wrapping_add(len as u32 + u32::from(p[3] & 0x20 != 0));
    id[flow] = id[flow].wrapping_add(1 + u16::from(p[3] & 0x10 != 0));
    pkt
}

fn flow_of(packet: &[u8]) -> Option<[u8; 12]> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || packet.get(9) != Some(&6) || ihl < 20 {
        return None;
    }
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(packet.get(12..20)?);
    k[8..].copy_from_slice(packet.get(ihl..ihl + 4)?);
    Some(k)
}

fuzz_target!(|data: &[u8]| {
    let (mut seq, mut id) = ([0u32; 4], [0u16; 4]);
    let mut input = Vec::new();
    let mut rest = data;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind & 0xe0 == 0xe0 {
            // A raw packet of up to 64 bytes.
            let n = usize::from(kind & 0x1f).min(tail.len());
            let mut pkt = vec![0u8; HDR];
            pkt.extend_from_slice(&tail[..n]);
            input.push(pkt);
            rest = &tail[n..];
        } else if let Some(p) = tail.get(..8) {
            input.push(segment(p, &mut seq, &mut id));
            rest = &tail[8..];
        } else {
            break;
        }
    }
    let mut c = Coalescer::default();
    for p in &input {
        c.push(p);
    }
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    c.flush(|f| {
        assert!(f.len() - HDR <= 65_535);
        assert!(plain_packets(f, &mut scratch, |p| out.push(p.to_vec())));
    });
    let input: Vec<Vec<u8>> = input.iter().map(|p| p[HDR..].to_vec()).collect();
    assert_eq!(out.len(), input.len());
    let mut flows: Vec<Option<[u8; 12]>> = input.iter().map(|p| flow_of(p)).collect();
    flows.dedup();
    for f in flows {
        let of = |v: &[Vec<u8>]| -> Vec<Vec<u8>> {
            v.iter().filter(|p| flow_of(p) == f).cloned().collect()
        };
        assert_eq!(of(&out), of(&input));
    }
});
