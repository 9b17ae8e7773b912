//! The per-packet policy on any packet a client sends: it never panics,
//! and a packet it forwards is IPv4 from the session's own address (or
//! from the client network it carries), with lengths that match the
//! frame, to a routed and authorized destination.
#![no_main]

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::OnceLock;

use cvpn_gw::config::Config;
use cvpn_gw::policy::{Policy, Verdict};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
listen = "0.0.0.0:443"
client_cidr = "10.250.0.0/22"
[tls]
cert = "c"
key = "k"
client_ca = "ca"
[[target_networks]]
id = "tn-a"
interface = "eth1"
vpc_cidr = "192.168.0.0/16"
[[routes]]
destination = "10.250.0.0/22"
target = "local"
[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "eng"
[[authorization_rules]]
destination = "10.250.0.0/22"
[[authorization_rules]]
destination = "10.43.0.0/16"
[[client_networks]]
common_name = "site-a"
cidr = "10.42.0.0/16"
[[client_networks]]
common_name = "site-b"
cidr = "10.43.0.0/16"
"#;

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        let c = Config::parse(CONFIG, Path::new("/")).expect("fuzz config");
        Policy::compile(&c).expect("policy")
    })
}

fuzz_target!(|data: &[u8]| {
    let p = policy();
    let me = Ipv4Addr::new(10, 250, 0, 2);
    let groups = p.group_mask(&["eng".to_string()]);
    if let Verdict::Forward(_) = p.check(data, me, "site-a", groups) {
        assert_eq!(data[0] >> 4, 4);
        let src = Ipv4Addr::new(data[12], data[13], data[14], data[15]);
        // site-a carries 10.42.0.0/16 (and not site-b's 10.43.0.0/16).
        assert!(src == me || src.octets()[..2] == [10, 42], "{src}");
        assert_eq!(
            usize::from(u16::from_be_bytes([data[2], data[3]])),
            data.len()
        );
        let dst = Ipv4Addr::new(data[16], data[17], data[18], data[19]);
        assert!(p.routes.lookup(dst).is_some());
        assert!(p.rules.allows(dst, groups));
    }
});
