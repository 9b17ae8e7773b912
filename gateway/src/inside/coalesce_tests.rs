use super::*;
use crate::inside::segment::plain_packets;

/// A plain TCP segment (zero virtio-net header) from port `sport`, with
/// `seq`, IP id `id`, `flags` and `len` bytes of data, checksums right.
fn segment(sport: u16, seq: u32, id: u16, flags: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; VNET_HDR_LEN + 20 + 32 + len];
    let ip = &mut p[VNET_HDR_LEN..];
    let total = ip.len() as u16;
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = TCP;
    ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
    ip[16..20].copy_from_slice(&[192, 168, 1, 5]);
    ipv4_checksum(&mut ip[..20]);
    let t = &mut ip[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&7u32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&512u16.to_be_bytes());
    // Timestamps option: NOP NOP TS.
    t[20..24].copy_from_slice(&[1, 1, 8, 10]);
    for (i, b) in t[32..].iter_mut().enumerate() {
        *b = (seq as usize + i) as u8;
    }
    let acc = sum(0, &ip[12..20]) + u32::from(TCP) + (ip.len() - 20) as u32;
    let c = fold(sum(acc, &ip[20..]));
    ip[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

const ACK: u8 = TCP_ACK;

/// What the kernel makes of the frames: plain packets, in order.
fn written(c: &mut Coalescer) -> (Vec<Vec<u8>>, usize) {
    let mut frames = Vec::new();
    c.flush(|f| frames.push(f.to_vec()));
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    for f in &frames {
        assert!(plain_packets(f, &mut scratch, |p| out.push(p.to_vec())));
    }
    (out, frames.len())
}

fn plain(p: &[Vec<u8>]) -> Vec<Vec<u8>> {
    p.iter().map(|p| p[VNET_HDR_LEN..].to_vec()).collect()
}

#[test]
fn a_stream_becomes_one_frame_that_segments_back_exactly() {
    let mut c = Coalescer::default();
    let input: Vec<Vec<u8>> = (0..10u32)
        .map(|i| segment(40000, 1000 + i * 1300, 50 + i as u16, ACK, 1300))
        .collect();
    for p in &input {
        c.push(p);
    }
    let (out, frames) = written(&mut c);
    assert_eq!(frames, 1);
    assert_eq!(out, plain(&input));
}

#[test]
fn short_and_push_segments_end_a_frame() {
    let mut c = Coalescer::default();
    let input = vec![
        segment(40000, 0, 1, ACK, 1000),
        segment(40000, 1000, 2, ACK, 500),
        segment(40000, 1500, 3, ACK, 1000),
        segment(40000, 2500, 4, ACK | TCP_PSH, 1000),
        segment(40000, 3500, 5, ACK, 1000),
    ];
    for p in &input {
        c.push(p);
    }
    let (out, frames) = written(&mut c);
    assert_eq!(frames, 3);
    assert_eq!(out, plain(&input));
}

#[test]
fn flows_interleave_and_each_keeps_its_order() {
    let mut c = Coalescer::default();
    let mut input = Vec::new();
    for i in 0..6u32 {
        input.push(segment(40000, i * 100, i as u16, ACK, 100));
        input.push(segment(40001, i * 100, 100 + i as u16, ACK, 100));
    }
    for p in &input {
        c.push(p);
    }
    let (out, frames) = written(&mut c);
    assert_eq!(frames, 2);
    let flow = |port: u16, v: &[Vec<u8>]| -> Vec<Vec<u8>> {
        v.iter()
            .filter(|p| p[20..22] == port.to_be_bytes())
            .cloned()
            .collect()
    };
    let input = plain(&input);
    assert_eq!(flow(40000, &out), flow(40000, &input));
    assert_eq!(flow(40001, &out), flow(40001, &input));
}

#[test]
fn gaps_bad_checksums_and_other_packets_are_not_merged() {
    let mut c = Coalescer::default();
    let mut bad = segment(40000, 200, 3, ACK, 100);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let input = vec![
        segment(40000, 0, 1, ACK, 100),
        // A gap.
        segment(40000, 150, 2, ACK, 100),
        bad,
        // A FIN: not merged, and it closes the flow's frame.
        segment(40000, 350, 4, ACK | 0x01, 100),
        segment(40000, 450, 5, ACK, 100),
        // An IP id out of step.
        segment(40000, 550, 9, ACK, 100),
    ];
    for p in &input {
        c.push(p);
    }
    let mut frames = Vec::new();
    assert_eq!(c.flush(|f| frames.push(f.to_vec())), 0);
    assert_eq!(frames, input, "each goes out as it came");
}

#[test]
fn a_frame_stays_under_64_kib() {
    let mut c = Coalescer::default();
    let input: Vec<Vec<u8>> = (0..60u32)
        .map(|i| segment(40000, i * 1400, i as u16, ACK, 1400))
        .collect();
    for p in &input {
        c.push(p);
    }
    let mut sizes = Vec::new();
    c.flush(|f| sizes.push(f.len() - VNET_HDR_LEN));
    assert!(sizes.len() >= 2 && sizes.iter().all(|&s| s <= MAX_FRAME_PACKET));
    let (out, _) = {
        for p in &input {
            c.push(p);
        }
        written(&mut c)
    };
    assert_eq!(out, plain(&input));
}
