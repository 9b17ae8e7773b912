//! The OpenVPN packet layer: the first byte's opcode and key id, and the
//! control channel's header (session ids, acknowledgements, message id),
//! as ssl_pkt.h describes them. Data packets are only told apart here;
//! their content is data.rs's.

use thiserror::Error;

/// Key method 2 client reset (the first packet of every session).
pub const HARD_RESET_CLIENT_V2: u8 = 7;
/// The server's answer to it.
pub const HARD_RESET_SERVER_V2: u8 = 8;
/// Starts a renegotiation with a new key id.
pub const SOFT_RESET_V1: u8 = 3;
/// Carries TLS records on the reliable control channel.
pub const CONTROL_V1: u8 = 4;
/// Acknowledgements only.
pub const ACK_V1: u8 = 5;
/// Data packet without peer id.
pub const DATA_V1: u8 = 6;
/// Data packet with a 24-bit peer id.
pub const DATA_V2: u8 = 9;
/// tls-crypt-v2 client reset (not served: no answer).
pub const HARD_RESET_CLIENT_V3: u8 = 10;

/// Length of a session id.
pub const SID_LEN: usize = 8;
/// Acknowledgements one packet carries at most (reliable.h's
/// RELIABLE_ACK_SIZE).
pub const MAX_ACKS: usize = 8;

/// A control session id: random, one per side.
pub type SessionId = [u8; SID_LEN];

/// Why a packet could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than its header says.
    #[error("packet truncated")]
    Truncated,
    /// An opcode this server does not take.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    /// More acknowledgements than a packet may carry.
    #[error("{0} acknowledgements in one packet (at most {MAX_ACKS})")]
    TooManyAcks(u8),
}

/// The opcode and key id of a packet's first byte.
#[inline]
pub fn split_first_byte(b: u8) -> (u8, u8) {
    (b >> 3, b & 7)
}

/// Whether `opcode` is a data packet's.
#[inline]
pub fn is_data(opcode: u8) -> bool {
    opcode == DATA_V2 || opcode == DATA_V1
}

/// Acknowledged message ids (at most MAX_ACKS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acks {
    ids: [u32; MAX_ACKS],
    len: u8,
}

impl Acks {
    /// The acknowledged ids.
    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..usize::from(self.len)]
    }

    /// Adds an id; false when full.
    pub fn push(&mut self, id: u32) -> bool {
        if usize::from(self.len) == MAX_ACKS {
            return false;
        }
        self.ids[usize::from(self.len)] = id;
        self.len += 1;
        true
    }

    /// No id.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A control-channel packet: a reset, a P_CONTROL_V1 or a P_ACK_V1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPacket<'a> {
    /// The opcode (never a data opcode).
    pub opcode: u8,
    /// The key id (0..=7).
    pub key_id: u8,
    /// The sender's session id.
    pub session_id: SessionId,
    /// Message ids of the receiver's this packet acknowledges.
    pub acks: Acks,
    /// The receiver's session id, present when `acks` is not empty.
    pub remote_session_id: Option<SessionId>,
    /// The message id; None for P_ACK_V1.
    pub message_id: Option<u32>,
    /// TLS records (P_CONTROL_V1) or reset options; empty for P_ACK_V1.
    pub payload: &'a [u8],
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PacketError> {
        if self.buf.len() < n {
            return Err(PacketError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, PacketError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, PacketError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn sid(&mut self) -> Result<SessionId, PacketError> {
        let mut s = [0u8; SID_LEN];
        s.copy_from_slice(self.take(SID_LEN)?);
        Ok(s)
    }
}

impl<'a> ControlPacket<'a> {
    /// Reads a control packet (no TCP length prefix, no tls-crypt
    /// wrapping).
    pub fn parse(buf: &'a [u8]) -> Result<ControlPacket<'a>, PacketError> {
        let mut r = Reader { buf };
        let (opcode, key_id) = split_first_byte(r.u8()?);
        match opcode {
            HARD_RESET_CLIENT_V2 | HARD_RESET_SERVER_V2 | SOFT_RESET_V1 | CONTROL_V1 | ACK_V1 => {}
            other => return Err(PacketError::UnknownOpcode(other)),
        }
        let session_id = r.sid()?;
        let n = r.u8()?;
        if usize::from(n) > MAX_ACKS {
            return Err(PacketError::TooManyAcks(n));
        }
        let mut acks = Acks::default();
        for _ in 0..n {
            acks.push(r.u32()?);
        }
        let remote_session_id = if n > 0 { Some(r.sid()?) } else { None };
        let message_id = if opcode == ACK_V1 {
            None
        } else {
            Some(r.u32()?)
        };
        Ok(ControlPacket {
            opcode,
            key_id,
            session_id,
            acks,
            remote_session_id,
            message_id,
            payload: r.buf,
        })
    }

    /// Appends the packet's wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.opcode << 3 | (self.key_id & 7));
        out.extend_from_slice(&self.session_id);
        out.push(self.acks.len);
        for id in self.acks.as_slice() {
            out.extend_from_slice(&id.to_be_bytes());
        }
        if !self.acks.is_empty() {
            out.extend_from_slice(&self.remote_session_id.unwrap_or_default());
        }
        if let Some(id) = self.message_id {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(self.payload);
    }
}

/// The peer id of a DATA_V2 packet.
#[inline]
pub fn data_v2_peer_id(packet: &[u8]) -> Option<u32> {
    let h = packet.get(..4)?;
    Some(u32::from_be_bytes([0, h[1], h[2], h[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_packets_round_trip() {
        let mut acks = Acks::default();
        acks.push(0);
        acks.push(7);
        let p = ControlPacket {
            opcode: CONTROL_V1,
            key_id: 2,
            session_id: [1; 8],
            acks,
            remote_session_id: Some([2; 8]),
            message_id: Some(5),
            payload: b"tls",
        };
        let mut wire = Vec::new();
        p.encode(&mut wire);
        assert_eq!(wire[0], 4 << 3 | 2);
        assert_eq!(wire.len(), 1 + 8 + 1 + 8 + 8 + 4 + 3);
        assert_eq!(ControlPacket::parse(&wire).unwrap(), p);

        // An ACK carries no message id; no acks means no remote id.
        let ack = ControlPacket {
            opcode: ACK_V1,
            message_id: None,
            payload: b"",
            ..p.clone()
        };
        wire.clear();
        ack.encode(&mut wire);
        assert_eq!(ControlPacket::parse(&wire).unwrap(), ack);
        let reset = ControlPacket {
            opcode: HARD_RESET_CLIENT_V2,
            key_id: 0,
            acks: Acks::default(),
            remote_session_id: None,
            message_id: Some(0),
            payload: b"",
            ..p
        };
        wire.clear();
        reset.encode(&mut wire);
        assert_eq!(wire.len(), 14);
        assert_eq!(ControlPacket::parse(&wire).unwrap(), reset);
    }

    #[test]
    fn hostile_headers_are_refused() {
        assert_eq!(ControlPacket::parse(&[]), Err(PacketError::Truncated));
        assert_eq!(
            ControlPacket::parse(&[DATA_V2 << 3, 0, 0, 0]),
            Err(PacketError::UnknownOpcode(DATA_V2))
        );
        let mut p = vec![CONTROL_V1 << 3];
        p.extend_from_slice(&[0; 8]);
        p.push(200);
        assert_eq!(ControlPacket::parse(&p), Err(PacketError::TooManyAcks(200)));
        p[9] = 2;
        p.extend_from_slice(&[0; 7]);
        assert_eq!(ControlPacket::parse(&p), Err(PacketError::Truncated));
        assert_eq!(data_v2_peer_id(&[DATA_V2 << 3, 0, 1, 2]), Some(258));
        assert_eq!(data_v2_peer_id(&[DATA_V2 << 3]), None);
    }
}
