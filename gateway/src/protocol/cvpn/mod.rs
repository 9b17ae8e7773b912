//! cvpn/1, the gateway's side: after the TLS handshake the client says
//! hello, the gateway pushes its configuration, and then frames (packets
//! and control messages) flow both ways; a datagram channel may carry
//! packets beside the stream. The wire format is `cvpn_proto`'s; this
//! module decides what each input means for the session.

pub mod datagram;
pub mod outbox;

use cvpn_proto::datagram::DatagramOffer;
use cvpn_proto::text::truncate_chars;
use cvpn_proto::{ClientHello, Control, EndpointConfig, Frame, PROTOCOL_VERSION, decode};

use crate::endpoint::Push;

/// How much of a reason a peer wrote is kept for the connection log.
pub const MAX_REASON_CHARS: usize = 200;

/// What one frame from the client means, once the session runs.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A packet for the policy (virtio-net header and IP packet).
    Packet(&'a [u8]),
    /// Nothing to do but note the client is alive.
    Keepalive,
}

/// Decodes the next complete frame in `buf`: what it means and its length,
/// None if it is not complete yet. Err: why the session ends (a clean
/// disconnect included), capped for the log.
pub fn next_inbound(buf: &[u8]) -> Result<Option<(Inbound<'_>, usize)>, String> {
    let (frame, n) = match decode(buf) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("malformed frame from client: {e}")),
    };
    let inbound = match frame {
        Frame::Packet(p) => Inbound::Packet(p),
        Frame::Control(c) => match Control::parse(c) {
            Ok(Control::Keepalive) => Inbound::Keepalive,
            Ok(Control::Disconnect { reason }) => {
                return Err(format!(
                    "client disconnected: {}",
                    truncate_chars(&reason, MAX_REASON_CHARS)
                ));
            }
            Ok(other) => {
                let what = format!("{other:?}");
                return Err(format!(
                    "protocol error: unexpected {}",
                    truncate_chars(&what, MAX_REASON_CHARS)
                ));
            }
            Err(e) => {
                let why = e.to_string();
                return Err(format!(
                    "protocol error: {}",
                    truncate_chars(&why, MAX_REASON_CHARS)
                ));
            }
        },
    };
    Ok(Some((inbound, n)))
}

/// The first frame of a session, which must be a hello: Ok(None) while it
/// is incomplete, Err with why the client is refused.
pub fn hello(buf: &[u8]) -> Result<Option<(ClientHello, usize)>, String> {
    let (frame, n) = match decode(buf) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("bad hello: {e}")),
    };
    let c = match frame {
        Frame::Control(c) => c,
        Frame::Packet(_) => return Err("bad hello: packet before hello".into()),
    };
    match Control::parse(c) {
        Ok(Control::Hello(h)) if h.version == PROTOCOL_VERSION => Ok(Some((h, n))),
        Ok(Control::Hello(h)) => Err(format!(
            "unsupported protocol version {} (this endpoint speaks {PROTOCOL_VERSION})",
            h.version
        )),
        Ok(other) => {
            let what = format!("{other:?}");
            Err(format!(
                "expected hello, got {}",
                truncate_chars(&what, MAX_REASON_CHARS)
            ))
        }
        Err(e) => {
            let why = e.to_string();
            Err(format!(
                "bad hello: {}",
                truncate_chars(&why, MAX_REASON_CHARS)
            ))
        }
    }
}

/// The configuration message a client gets when its session starts.
pub fn config_message(push: Push, connection_id: &str, datagram: Option<DatagramOffer>) -> Control {
    Control::Config(EndpointConfig {
        address: push.address,
        prefix_len: push.prefix_len,
        routes: push.routes,
        full_tunnel: push.full_tunnel,
        dns_servers: push.dns_servers,
        mtu: push.mtu,
        banner: push.banner,
        keepalive_secs: push.keepalive.as_secs() as u32,
        session_expires_in_secs: push.session_timeout.as_secs(),
        connection_id: connection_id.to_string(),
        datagram,
        client_networks: push.client_networks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use cvpn_proto::{encode_control, encode_packet};

    fn control(msg: &Control) -> BytesMut {
        let mut b = BytesMut::new();
        encode_control(&mut b, msg).unwrap();
        b
    }

    #[test]
    fn a_session_starts_with_a_hello_of_this_version() {
        let mut h = ClientHello {
            version: PROTOCOL_VERSION,
            os: "linux".into(),
            client: "test".into(),
            datagram: true,
            live_routes: true,
        };
        let b = control(&Control::Hello(h.clone()));
        assert_eq!(hello(&b[..b.len() - 1]), Ok(None));
        let (got, n) = hello(&b).unwrap().unwrap();
        assert_eq!((got.datagram, n), (true, b.len()));
        h.version += 1;
        let e = hello(&control(&Control::Hello(h))).unwrap_err();
        assert!(e.starts_with("unsupported protocol version"), "{e}");
        let e = hello(&control(&Control::Keepalive)).unwrap_err();
        assert!(e.starts_with("expected hello"), "{e}");
        let mut p = BytesMut::new();
        encode_packet(&mut p, &[0u8; 40]).unwrap();
        assert_eq!(hello(&p).unwrap_err(), "bad hello: packet before hello");
    }

    #[test]
    fn inbound_frames_and_how_sessions_end() {
        let mut b = BytesMut::new();
        encode_packet(&mut b, &[7u8; 40]).unwrap();
        let ka = control(&Control::Keepalive);
        b.extend_from_slice(&ka);
        let (first, n) = next_inbound(&b).unwrap().unwrap();
        assert_eq!(first, Inbound::Packet(&[7u8; 40]));
        assert_eq!(
            next_inbound(&b[n..]).unwrap().unwrap().0,
            Inbound::Keepalive
        );
        assert_eq!(next_inbound(&b[n..n + 1]), Ok(None));
        let long = "x".repeat(10_000);
        let bye = control(&Control::Disconnect { reason: long });
        let e = next_inbound(&bye).unwrap_err();
        assert!(e.starts_with("client disconnected: xxx"));
        assert!(e.chars().count() < MAX_REASON_CHARS + 30, "{}", e.len());
    }
}
