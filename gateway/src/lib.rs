//! cvpn-gw: the endpoint. Pure logic (configuration, address pool, policy,
//! ICMP replies) is separate from the I/O shells (TLS listener, sessions,
//! tun device, network set-up, logs).

pub mod config;
pub mod connlog;
pub mod datagram;
pub mod dataplane;
pub mod export;
pub mod handshakes;
pub mod icmp;
pub mod lease;
pub mod metrics;
pub mod netsetup;
pub mod policy;
pub mod pool;
pub mod tls;
