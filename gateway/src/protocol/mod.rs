//! The wire protocols the endpoint speaks, each a sans-IO state machine:
//! bytes or datagrams in; bytes or datagrams for the outside and packets
//! for the inside out. The shells in `outside` do the I/O.

pub mod cvpn;
pub mod openvpn;
