//! The client's host set-up: routes and DNS (the tun device is created by
//! the tunnel itself and vanishes with it).

pub mod dns;
pub mod routes;
