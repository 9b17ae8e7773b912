//! cvpn-gw: the endpoint. One endpoint core (`endpoint`: pool, policy,
//! sessions, logs, metrics, revocation) that wire protocols (`protocol`,
//! sans-IO) plug into through thin I/O shells: `inside` (the tun device)
//! and `outside` (the TCP listener, the UDP socket). Pure logic
//! (configuration, policy, ICMP replies, protocol state) is unit-tested
//! without root.

pub mod cluster;
pub mod config;
pub mod control;
pub mod endpoint;
pub mod export;
pub mod icmp;
pub mod inside;
pub mod metrics_http;
pub mod netsetup;
pub mod outside;
pub mod packet_thread;
pub mod policy;
pub mod protocol;
pub mod serve;
pub mod tls;
