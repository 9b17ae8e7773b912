//! The OpenVPN protocol, server side, as clients of the openvpn 2.6 and
//! OpenVPN Connect 3 generation speak it with certificates: the packet
//! layer, the control channel's reliability layer, key method 2, the data
//! channel, PUSH_REPLY and the stateless reset cookie. Sans-IO: the
//! shells in `outside` move the bytes.

pub mod channel;
pub mod control;
pub mod cookie;
pub mod data;
pub mod keys;
pub mod packet;
pub mod prf;
pub mod push;
pub mod reliable;
pub mod tls_crypt;
