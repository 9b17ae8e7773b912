//! The outside of the endpoint: the TCP listener and the UDP socket, and
//! the shells that drive each protocol's session over them.

pub mod batch;
pub mod openvpn;
pub mod stream;
pub mod tcp;
pub mod udp;

use std::sync::Arc;

use crate::endpoint::Endpoint;

/// What the outside shells share: the endpoint core and, with
/// transport_protocol = "udp", the UDP socket.
#[derive(Clone)]
pub struct Outside {
    /// The endpoint core.
    pub ep: Arc<Endpoint>,
    /// The UDP socket and who is on it.
    pub udp: Option<Arc<udp::Udp>>,
    /// The OpenVPN clients.
    pub openvpn: Arc<openvpn::Clients>,
}
