//! Control messages: JSON objects tagged by `type`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::datagram::DatagramOffer;
use crate::frame::FrameError;

/// The first message a client sends after the TLS handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    pub version: u32,
    /// Operating system, for the connection log (e.g. "linux").
    pub os: String,
    /// Client software and version.
    pub client: String,
    /// The profile says `proto udp`: the client would take the datagram
    /// channel if the endpoint offers it.
    #[serde(default)]
    pub datagram: bool,
    /// The client takes `routes` messages: route changes while connected.
    #[serde(default)]
    pub live_routes: bool,
}

/// What the endpoint tells a client once it is admitted. Not `Clone`: the
/// datagram keys in it are used once.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointConfig {
    /// The client's tunnel address and the client CIDR's prefix length.
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// Destinations to route through the tunnel (split tunnel).
    pub routes: Vec<Ipv4Net>,
    /// Full tunnel: route everything (the client installs 0/1 and 128/1).
    pub full_tunnel: bool,
    pub dns_servers: Vec<Ipv4Addr>,
    pub mtu: u16,
    pub banner: Option<String>,
    pub keepalive_secs: u32,
    /// Seconds until the endpoint ends the session (session_timeout).
    pub session_expires_in_secs: u64,
    /// Identifies the session in the endpoint's logs.
    pub connection_id: String,
    /// The datagram channel, if the client asked and the endpoint runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagram: Option<DatagramOffer>,
    /// The networks behind this client that the endpoint routes to it
    /// (the client is a site's router).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_networks: Vec<Ipv4Net>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    Hello(ClientHello),
    Config(EndpointConfig),
    Keepalive,
    Disconnect {
        reason: String,
    },
    /// The endpoint ends the session and asks the client to reconnect at
    /// once, to another remote of its profile first (the gateway is
    /// draining).
    Reconnect {
        reason: String,
    },
    /// The endpoint's route table changed: the destinations to route
    /// through the tunnel now (split tunnel; only to clients that said
    /// `live_routes`).
    Routes {
        routes: Vec<Ipv4Net>,
    },
}

impl Control {
    pub fn parse(bytes: &[u8]) -> Result<Control, FrameError> {
        serde_json::from_slice(bytes).map_err(|e| FrameError::Control(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip() {
        let c = Control::Config(EndpointConfig {
            client_networks: vec!["10.42.0.0/16".parse().unwrap()],
            address: Ipv4Addr::new(10, 250, 0, 2),
            prefix_len: 22,
            routes: vec!["192.168.0.0/16".parse().unwrap()],
            full_tunnel: false,
            dns_servers: vec![Ipv4Addr::new(192, 168, 1, 53)],
            mtu: 1400,
            banner: Some("Authorized use only.".into()),
            keepalive_secs: 10,
            session_expires_in_secs: 86_400,
            connection_id: "cvpn-conn-1".into(),
            datagram: None,
        });
        let json = serde_json::to_vec(&c).unwrap();
        assert_eq!(Control::parse(&json).unwrap(), c);
    }

    #[test]
    fn unknown_or_malformed_messages_are_errors() {
        assert!(Control::parse(br#"{"type":"launch_missiles"}"#).is_err());
        assert!(Control::parse(br#"{"type":"hello","version":"x"}"#).is_err());
        assert!(Control::parse(b"\xff\xfe").is_err());
        assert_eq!(
            Control::parse(br#"{"type":"keepalive"}"#).unwrap(),
            Control::Keepalive
        );
    }
}
