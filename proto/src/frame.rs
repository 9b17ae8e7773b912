//! Framing: `[type u8][len u24 BE][payload]`. A packet frame's payload is
//! a virtio-net header followed by one IP packet (up to 64 KB: a
//! segmentation-offload packet crosses as one frame).

use bytes::BufMut;

use crate::control::Control;
use crate::vnet::VNET_HDR_LEN;

pub const HEADER_LEN: usize = 4;
/// Largest IP packet a frame may carry (the IPv4 total-length limit).
pub const MAX_PACKET: usize = 65_535;
/// Largest packet frame payload: header and packet.
pub const MAX_PACKET_FRAME: usize = VNET_HDR_LEN + MAX_PACKET;
/// Largest control message: far above any valid one, far below memory trouble.
pub const MAX_CONTROL: usize = 16 * 1024;
/// Smallest packet frame payload: header and an IPv4 header without options.
pub const MIN_PACKET_FRAME: usize = VNET_HDR_LEN + 20;

const TYPE_PACKET: u8 = 1;
const TYPE_CONTROL: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Packet(&'a [u8]),
    Control(&'a [u8]),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("packet frame of {0} bytes (must be {MIN_PACKET_FRAME}..={MAX_PACKET_FRAME})")]
    PacketSize(usize),
    #[error("control frame of {0} bytes (must be 1..={MAX_CONTROL})")]
    ControlSize(usize),
    #[error("malformed control message: {0}")]
    Control(String),
}

/// Decodes the first frame of `buf`. `Ok(None)`: the frame is incomplete,
/// read more. `Ok(Some((frame, n)))`: the frame and the bytes it took.
/// Errors are decided from the header alone, so a hostile length is refused
/// before anything is buffered for it.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let kind = header[0];
    let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
    match kind {
        TYPE_PACKET if !(MIN_PACKET_FRAME..=MAX_PACKET_FRAME).contains(&len) => {
            return Err(FrameError::PacketSize(len));
        }
        TYPE_CONTROL if len == 0 || len > MAX_CONTROL => return Err(FrameError::ControlSize(len)),
        TYPE_PACKET | TYPE_CONTROL => {}
        other => return Err(FrameError::UnknownType(other)),
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let frame = if kind == TYPE_PACKET {
        Frame::Packet(payload)
    } else {
        Frame::Control(payload)
    };
    Ok(Some((frame, HEADER_LEN + len)))
}

fn put_header(out: &mut impl BufMut, kind: u8, len: usize) {
    // Callers have checked that `len` fits in 24 bits.
    out.put_u32(u32::from(kind) << 24 | len as u32);
}

/// Appends one packet frame to `out`; `payload` is a virtio-net header and
/// the packet, as a tun device with IFF_VNET_HDR reads them.
pub fn encode_packet(out: &mut impl BufMut, payload: &[u8]) -> Result<(), FrameError> {
    out.put_slice(&packet_header(payload.len())?);
    out.put_slice(payload);
    Ok(())
}

/// The header of a packet frame whose payload is `len` bytes, for a
/// payload read into place behind it.
pub fn packet_header(len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    if !(MIN_PACKET_FRAME..=MAX_PACKET_FRAME).contains(&len) {
        return Err(FrameError::PacketSize(len));
    }
    let mut h = [0u8; HEADER_LEN];
    put_header(&mut &mut h[..], TYPE_PACKET, len);
    Ok(h)
}

/// Appends one control frame to `out`.
pub fn encode_control(out: &mut impl BufMut, msg: &Control) -> Result<(), FrameError> {
    let json = serde_json::to_vec(msg).map_err(|e| FrameError::Control(e.to_string()))?;
    if json.is_empty() || json.len() > MAX_CONTROL {
        return Err(FrameError::ControlSize(json.len()));
    }
    put_header(out, TYPE_CONTROL, json.len());
    out.put_slice(&json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    #[test]
    fn round_trip_several_frames_in_one_buffer() {
        let mut buf = Vec::new();
        encode_packet(&mut buf, &packet(MIN_PACKET_FRAME)).unwrap();
        encode_control(&mut buf, &Control::Keepalive).unwrap();
        encode_packet(&mut buf, &packet(MAX_PACKET_FRAME)).unwrap();
        let mut pos = 0;
        let mut seen = Vec::new();
        while let Some((frame, n)) = decode(&buf[pos..]).unwrap() {
            seen.push(match frame {
                Frame::Packet(p) => p.len(),
                Frame::Control(c) => {
                    assert_eq!(Control::parse(c).unwrap(), Control::Keepalive);
                    0
                }
            });
            pos += n;
        }
        assert_eq!(seen, vec![MIN_PACKET_FRAME, 0, MAX_PACKET_FRAME]);
        assert_eq!(pos, buf.len());
    }

    #[test]
    fn a_header_put_in_front_of_a_payload_read_in_place_decodes() {
        let payload = packet(1500);
        let mut buf = packet_header(payload.len()).unwrap().to_vec();
        buf.extend_from_slice(&payload);
        assert_eq!(
            decode(&buf).unwrap(),
            Some((Frame::Packet(&payload), buf.len()))
        );
        assert_eq!(
            packet_header(MIN_PACKET_FRAME - 1),
            Err(FrameError::PacketSize(MIN_PACKET_FRAME - 1))
        );
        assert!(packet_header(MAX_PACKET_FRAME + 1).is_err());
    }

    #[test]
    fn incomplete_frames_ask_for_more() {
        let mut buf = Vec::new();
        encode_packet(&mut buf, &packet(100)).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_headers_are_errors() {
        assert_eq!(decode(&[9, 0, 0, 40]), Err(FrameError::UnknownType(9)));
        assert_eq!(decode(&[1, 0, 0, 3]), Err(FrameError::PacketSize(3)));
        assert_eq!(
            decode(&[1, 0xff, 0xff, 0xff]),
            Err(FrameError::PacketSize(0xff_ffff))
        );
        assert_eq!(decode(&[1, 1, 0, 10]), Err(FrameError::PacketSize(65_546)));
        assert_eq!(decode(&[2, 0, 0, 0]), Err(FrameError::ControlSize(0)));
        assert_eq!(
            decode(&[2, 0, 0xff, 0xff]),
            Err(FrameError::ControlSize(65_535))
        );
        assert!(encode_packet(&mut Vec::new(), &packet(MIN_PACKET_FRAME - 1)).is_err());
        assert!(encode_packet(&mut Vec::new(), &packet(MAX_PACKET_FRAME + 1)).is_err());
    }

    /// Every byte string of a pseudo-random corpus decodes without panic.
    #[test]
    fn decoder_is_total() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (state >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            let mut pos = 0;
            while let Ok(Some((frame, n))) = decode(&bytes[pos..]) {
                if let Frame::Control(c) = frame {
                    let _ = Control::parse(c);
                }
                pos += n;
            }
        }
    }
}
