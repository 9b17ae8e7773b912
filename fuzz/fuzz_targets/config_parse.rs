//! The endpoint configuration parser on any text: it never panics, and a
//! configuration it accepts holds the managed service's limits (client
//! CIDR /12../22 overlapping no route but the local one, at most two DNS
//! servers, a banner of at most 1,400 characters).
#![no_main]

use std::path::Path;

use cvpn_gw::config::{Config, RouteTarget};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Config::parse(text, Path::new("/etc/cvpn")) else {
        return;
    };
    assert!((12..=22).contains(&c.client_cidr.prefix_len()));
    assert!(c.dns_servers.len() <= 2);
    assert!(c.banner.as_ref().is_none_or(|b| b.chars().count() <= 1400));
    for r in &c.routes {
        let overlaps = r.destination.contains(&c.client_cidr.network())
            || c.client_cidr.contains(&r.destination.network());
        assert!(!overlaps || r.target == RouteTarget::Local);
    }
});
