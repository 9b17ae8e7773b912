//! cvpn-gw: the endpoint. Pure logic (configuration, address pool, policy,
//! ICMP replies) is separate from the I/O shells (TLS listener, sessions,
//! tun device, network set-up, logs).

pub mod config;
pub mod policy;
pub mod pool;
