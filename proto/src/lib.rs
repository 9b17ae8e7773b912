//! cvpn-proto: the wire protocol spoken over a TLS 1.3 stream negotiated with
//! ALPN `cvpn/1`.
//!
//! The stream is a sequence of frames: a 4-byte header (type, 24-bit
//! big-endian payload length) and the payload. A packet frame carries a
//! virtio-net header and one IP packet; a control frame carries one JSON
//! control message. The decoder is
//! pure and total: any byte string yields a frame, "need more", or an error.

// The TLS tests share helpers with the integration tests, which name the
// crate.
#[cfg(test)]
extern crate self as cvpn_proto;

pub mod control;
pub mod datagram;
pub mod frame;
pub mod record;
pub mod text;
#[cfg(not(feature = "rustls-records"))]
pub mod tls;
/// The same interface on rustls' own record path (bench A/B only).
#[cfg(feature = "rustls-records")]
#[path = "tls_rustls.rs"]
pub mod tls;
pub mod transport;
pub mod vnet;

pub use control::{ClientHello, Control, EndpointConfig};
pub use frame::{
    Frame, FrameError, HEADER_LEN, MAX_CONTROL, MAX_PACKET, MAX_PACKET_FRAME, decode,
    encode_control, encode_packet, packet_header,
};
pub use tls::{TlsError, TlsTunnel};
pub use transport::Transport;
pub use vnet::{VNET_HDR_LEN, VnetHdr};

/// The ALPN protocol id; a peer that does not offer it is refused.
pub const ALPN: &[u8] = b"cvpn/1";

/// Version carried in the client's hello.
pub const PROTOCOL_VERSION: u32 = 1;
