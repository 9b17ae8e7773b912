//! The stateless reset cookie of OpenVPN 2.6 servers over UDP (ssl_pkt.c,
//! mudp.c): the server answers a client's reset with a session id that is
//! an HMAC of the client's address, its session id and the time, and keeps
//! nothing. Only a packet that comes back from that address with that id
//! acknowledged creates a session, so a spoofed source costs one answer of
//! the reset's size and no state.

use std::net::SocketAddr;

use aws_lc_rs::hmac;

use super::packet::{ACK_V1, CONTROL_V1, ControlPacket, SID_LEN, SessionId};

/// The hand window in seconds: a cookie is good for 60 to 90 s.
const HAND_WINDOW: u64 = 60;

/// The server's secret for cookies, random per run.
pub struct CookieKey(hmac::Key);

impl CookieKey {
    /// A new random key; None without system randomness.
    pub fn new() -> Option<CookieKey> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).ok()?;
        Some(CookieKey(hmac::Key::new(hmac::HMAC_SHA256, &k)))
    }

    fn at(&self, slot: u64, from: SocketAddr, client: &SessionId) -> SessionId {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&slot.to_be_bytes());
        match from {
            SocketAddr::V4(a) => ctx.update(&a.ip().octets()),
            SocketAddr::V6(a) => ctx.update(&a.ip().octets()),
        }
        ctx.update(&from.port().to_be_bytes());
        ctx.update(client);
        let tag = ctx.sign();
        let mut sid = [0u8; SID_LEN];
        sid.copy_from_slice(&tag.as_ref()[..SID_LEN]);
        sid
    }

    /// The server's session id for a client's reset, `now` in Unix
    /// seconds.
    pub fn session_id(&self, from: SocketAddr, client: &SessionId, now: u64) -> SessionId {
        self.at(now / (HAND_WINDOW / 2), from, client)
    }

    /// Whether `packet`, from `from`, continues a three-way handshake the
    /// server answered: a P_CONTROL_V1 or P_ACK_V1 of key id 0 that
    /// acknowledges the server's reset (id 0, or 1) under a cookie of
    /// this or the two previous time slots, with a message id of at most 1.
    pub fn admits(&self, packet: &ControlPacket<'_>, from: SocketAddr, now: u64) -> bool {
        if !matches!(packet.opcode, CONTROL_V1 | ACK_V1) || packet.key_id != 0 {
            return false;
        }
        let Some(server) = packet.remote_session_id else {
            return false;
        };
        if packet.acks.as_slice().iter().any(|&id| id > 1) || packet.message_id.unwrap_or(0) > 1 {
            return false;
        }
        let slot = now / (HAND_WINDOW / 2);
        (slot.saturating_sub(2)..=slot).any(|s| {
            let expected = self.at(s, from, &packet.session_id);
            // Constant time: the cookie is a secret until it is echoed.
            aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &server).is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openvpn::packet::Acks;

    fn reply(
        client: SessionId,
        server: SessionId,
        ack: u32,
        message_id: Option<u32>,
    ) -> ControlPacket<'static> {
        let mut acks = Acks::default();
        acks.push(ack);
        ControlPacket {
            opcode: if message_id.is_some() {
                CONTROL_V1
            } else {
                ACK_V1
            },
            key_id: 0,
            session_id: client,
            acks,
            remote_session_id: Some(server),
            message_id,
            payload: b"",
        }
    }

    #[test]
    fn only_the_echoed_cookie_from_the_same_address_admits() {
        let k = CookieKey::new().unwrap();
        let from: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let client = [7u8; 8];
        let t = 1_800_000_000;
        let server = k.session_id(from, &client, t);
        assert!(k.admits(&reply(client, server, 0, Some(1)), from, t));
        assert!(k.admits(&reply(client, server, 0, None), from, t + 60));
        // Too late, another address or port, another client id, a forged
        // cookie, or acknowledging more than the handshake: refused.
        assert!(!k.admits(&reply(client, server, 0, Some(1)), from, t + 120));
        let other: SocketAddr = "198.18.0.2:40001".parse().unwrap();
        assert!(!k.admits(&reply(client, server, 0, Some(1)), other, t));
        assert!(!k.admits(&reply([8; 8], server, 0, Some(1)), from, t));
        assert!(!k.admits(&reply(client, [0; 8], 0, Some(1)), from, t));
        assert!(!k.admits(&reply(client, server, 5, Some(1)), from, t));
        assert!(!k.admits(&reply(client, server, 0, Some(9)), from, t));
        // Another run's key knows nothing of this one's cookies.
        let k2 = CookieKey::new().unwrap();
        assert!(!k2.admits(&reply(client, server, 0, Some(1)), from, t));
    }
}
