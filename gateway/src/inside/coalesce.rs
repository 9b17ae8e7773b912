//! Coalescing toward the tun device: consecutive TCP segments of one flow
//! that arrived in one batch from clients go to the kernel as one offload
//! frame (a virtio-net header asking for TCP segmentation), so the stack
//! routes, NATs and forwards them once instead of once per segment, as
//! GRO does on a NIC. The rules are Linux GRO's (and wireguard-go's tun
//! GRO): same flow, contiguous sequence numbers, the same headers but for
//! length, IP id (incrementing), checksum and a PSH on the last segment,
//! every segment but the last of the same size, each one's checksums
//! right. What the kernel cuts the frame back into is exactly what came
//! in (the fuzz target `coalesce_tcp` checks it with
//! [`super::segment::plain_packets`]). Pure: no I/O.

use cvpn_proto::VNET_HDR_LEN;
use cvpn_proto::vnet::{F_NEEDS_CSUM, GSO_TCPV4};

use super::segment::{fold, ipv4_checksum, sum};

const TCP: u8 = 6;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
/// Flags that end coalescing (FIN, SYN, RST, URG, ECE, CWR).
const TCP_NOT_COALESCED: u8 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40 | 0x80;
/// The largest IPv4 packet, and so the largest frame's packet.
const MAX_FRAME_PACKET: usize = 65_535;
/// Segments in one frame at most (the kernel's GSO limit is higher).
const MAX_SEGMENTS: u16 = 64;

/// The flow a TCP segment belongs to: addresses and ports.
type FlowKey = [u8; 12];

/// A frame being built: one packet, or a head with segments after it.
struct Frame {
    /// Virtio-net header and IP packet.
    buf: Vec<u8>,
    /// Set while segments may still join.
    open: Option<FlowKey>,
    /// The IPv4 header's length and the TCP header's.
    ihl: usize,
    thl: usize,
    /// The size of each segment's payload (the first one's).
    gso_size: usize,
    segments: u16,
    /// The sequence number the next segment must start at.
    next_seq: u32,
}

/// Packets for the tun device, coalesced where the rules allow; written
/// in the order they came, per flow.
#[derive(Default)]
pub struct Coalescer {
    frames: Vec<Frame>,
    /// Buffers of frames already written, kept for the next batch.
    spare: Vec<Vec<u8>>,
}

/// What a coalescing candidate's headers say.
struct Segment {
    key: FlowKey,
    ihl: usize,
    thl: usize,
    seq: u32,
    payload: usize,
    psh: bool,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The flow of an IPv4 TCP packet, if its headers are there.
fn flow_key(packet: &[u8]) -> Option<FlowKey> {
    let first = *packet.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || packet.get(9) != Some(&TCP) || ihl < 20 {
        return None;
    }
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(packet.get(12..20)?);
    key[8..].copy_from_slice(packet.get(ihl..ihl + 4)?);
    Some(key)
}

/// Whether the TCP checksum of `packet` (IPv4, header of `ihl` bytes) is
/// right.
fn tcp_checksum_ok(packet: &[u8], ihl: usize) -> bool {
    let l4 = &packet[ihl..];
    let acc = sum(0, &packet[12..20]) + u32::from(TCP) + l4.len() as u32;
    fold(sum(acc, l4)) == 0
}

/// `payload` (virtio-net header and IP packet) as a segment that may be
/// coalesced: a plain IPv4 TCP segment with data, ACK and no flag that
/// ends coalescing, no IP options or fragments, checksums right.
fn candidate(payload: &[u8]) -> Option<Segment> {
    let (hdr, packet) = payload.split_at_checked(VNET_HDR_LEN)?;
    if hdr.iter().any(|&b| b != 0) || packet.first() != Some(&0x45) {
        return None;
    }
    let key = flow_key(packet)?;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
    if total != packet.len() || fragment || fold(sum(0, &packet[..20])) != 0 {
        return None;
    }
    let thl = usize::from(*packet.get(20 + 12)? >> 4) * 4;
    let flags = packet[20 + 13];
    if thl < 20
        || packet.len() <= 20 + thl
        || flags & TCP_ACK == 0
        || flags & TCP_NOT_COALESCED != 0
    {
        return None;
    }
    if !tcp_checksum_ok(packet, 20) {
        return None;
    }
    Some(Segment {
        key,
        ihl: 20,
        thl,
        seq: be32(&packet[24..28]),
        payload: packet.len() - 20 - thl,
        psh: flags & TCP_PSH != 0,
    })
}

impl Frame {
    fn packet(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..]
    }

    /// Whether `seg` (whose packet is `packet`) continues this frame.
    fn continues(&self, seg: &Segment, packet: &[u8]) -> bool {
        let head = self.packet();
        let (ihl, thl) = (self.ihl, self.thl);
        let id = u16::from_be_bytes([head[4], head[5]]).wrapping_add(self.segments);
        seg.thl == thl
            && seg.seq == self.next_seq
            && seg.payload <= self.gso_size
            && self.segments < MAX_SEGMENTS
            && head.len() + seg.payload <= MAX_FRAME_PACKET
            && u16::from_be_bytes([packet[4], packet[5]]) == id
            // Version, TOS; flags, TTL, protocol; addresses.
            && head[..2] == packet[..2]
            && head[6..10] == packet[6..10]
            && head[12..20] == packet[12..20]
            // Ports; ack, header length; flags but PSH; window, urgent
            // pointer and options.
            && head[ihl..ihl + 4] == packet[ihl..ihl + 4]
            && head[ihl + 8..ihl + 13] == packet[ihl + 8..ihl + 13]
            && head[ihl + 13] | TCP_PSH == packet[ihl + 13] | TCP_PSH
            && head[ihl + 14..ihl + 16] == packet[ihl + 14..ihl + 16]
            && head[ihl + 18..ihl + thl] == packet[ihl + 18..ihl + thl]
    }

    /// Appends `seg`'s payload; a short or PSH segment is the last.
    fn append(&mut self, seg: &Segment, packet: &[u8]) {
        self.buf.extend_from_slice(&packet[seg.ihl + seg.thl..]);
        self.segments += 1;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        if seg.psh {
            let at = VNET_HDR_LEN + self.ihl + 13;
            self.buf[at] |= TCP_PSH;
        }
        if seg.psh || seg.payload < self.gso_size {
            self.open = None;
        }
    }

    /// Turns a head with segments behind it into an offload frame: the
    /// virtio-net header asks for TCP segmentation and the checksum, the
    /// IP header has the whole length, the TCP checksum field the
    /// pseudo-header's sum (what the kernel completes).
    fn finish(&mut self) {
        if self.segments < 2 {
            return;
        }
        let (ihl, thl) = (self.ihl, self.thl);
        let (hdr, packet) = self.buf.split_at_mut(VNET_HDR_LEN);
        let total = packet.len();
        hdr[0] = F_NEEDS_CSUM;
        hdr[1] = GSO_TCPV4;
        hdr[2..4].copy_from_slice(&((ihl + thl) as u16).to_le_bytes());
        hdr[4..6].copy_from_slice(&(self.gso_size as u16).to_le_bytes());
        hdr[6..8].copy_from_slice(&(ihl as u16).to_le_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
        packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ipv4_checksum(&mut packet[..ihl]);
        let pseudo = sum(0, &packet[12..20]) + u32::from(TCP) + (total - ihl) as u32;
        let partial = !fold(pseudo);
        packet[ihl + 16..ihl + 18].copy_from_slice(&partial.to_be_bytes());
    }
}

impl Coalescer {
    /// Takes one packet for the tun device (virtio-net header and IP
    /// packet, already judged by the policy).
    pub fn push(&mut self, payload: &[u8]) {
        let Some(seg) = candidate(payload) else {
            // A later segment of its flow must not join a frame written
            // before it.
            if let Some(key) = payload.get(VNET_HDR_LEN..).and_then(flow_key) {
                self.close(&key);
            }
            return self.start(payload, None);
        };
        let packet = &payload[VNET_HDR_LEN..];
        if let Some(f) = self
            .frames
            .iter_mut()
            .rev()
            .find(|f| f.open == Some(seg.key))
        {
            if f.continues(&seg, packet) {
                return f.append(&seg, packet);
            }
            f.open = None;
        }
        self.start(payload, Some(&seg));
    }

    /// Hands every frame to `write`, in order, and empties the batch;
    /// returns how many packets went out inside another's frame.
    pub fn flush(&mut self, mut write: impl FnMut(&[u8])) -> u64 {
        let mut merged = 0;
        for mut f in self.frames.drain(..) {
            f.finish();
            merged += u64::from(f.segments.saturating_sub(1));
            write(&f.buf);
            f.buf.clear();
            self.spare.push(f.buf);
        }
        merged
    }

    fn close(&mut self, key: &FlowKey) {
        for f in self
            .frames
            .iter_mut()
            .filter(|f| f.open.as_ref() == Some(key))
        {
            f.open = None;
        }
    }

    fn start(&mut self, payload: &[u8], seg: Option<&Segment>) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.extend_from_slice(payload);
        let open = seg.filter(|s| !s.psh).map(|s| s.key);
        self.frames.push(Frame {
            buf,
            open,
            ihl: seg.map_or(0, |s| s.ihl),
            thl: seg.map_or(0, |s| s.thl),
            gso_size: seg.map_or(0, |s| s.payload),
            segments: 1,
            next_seq: seg.map_or(0, |s| s.seq.wrapping_add(s.payload as u32)),
        });
    }
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
