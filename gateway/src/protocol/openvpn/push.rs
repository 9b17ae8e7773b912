//! PUSH_REPLY (push.c): the client's address, routes, DNS, timers and data
//! channel parameters as the options a 2.6 client takes from its server,
//! split into several messages with push-continuation when long.

use std::time::Duration;

use crate::endpoint::Push;

use super::keys::Cipher;

/// Longest PUSH_REPLY message sent (push.c keeps them under its
/// PUSH_BUNDLE_SIZE of 1024).
const MAX_MESSAGE: usize = 1000;

/// What the client negotiated, pushed back to it.
pub struct Negotiated {
    /// The data-channel cipher.
    pub cipher: Cipher,
    /// Data-channel keys come from the TLS exporter.
    pub tls_ekm: bool,
    /// The client announces its exit on the control channel.
    pub cc_exit: bool,
    /// The peer id of its DATA_V2 packets, if it takes DATA_V2.
    pub peer_id: Option<u32>,
}

/// The tun-side IPv6 gateway of full-tunnel clients (a unique local
/// address: nothing is routed there, the client blocks it all).
const BLOCKED_IPV6_GATEWAY: &str = "fd63:7670:6e00::1";

/// A full-tunnel client's IPv6 address on its tun device: its IPv4
/// address under BLOCKED_IPV6_GATEWAY's /64, unique per client.
fn blocked_ipv6_address(v4: std::net::Ipv4Addr) -> std::net::Ipv6Addr {
    let [a, b, c, d] = v4.octets();
    let hi = u16::from_be_bytes([a, b]);
    let lo = u16::from_be_bytes([c, d]);
    std::net::Ipv6Addr::new(0xfd63, 0x7670, 0x6e00, 0, 0, 0, hi, lo)
}

fn netmask(prefix: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// The options pushed, in order.
pub fn options(push: &Push, n: &Negotiated, idle_timeout: Duration) -> Vec<String> {
    let mut o = vec![
        "topology subnet".to_string(),
        format!("route-gateway {}", push.gateway),
        format!("ifconfig {} {}", push.address, netmask(push.prefix_len)),
        format!("ping {}", push.keepalive.as_secs()),
        format!("ping-restart {}", idle_timeout.as_secs()),
    ];
    if push.full_tunnel {
        // The tunnel carries IPv4 only: IPv6 goes into it too and the
        // client answers it itself (OpenVPN's documented block-ipv6 set),
        // so a dual-stacked client sends nothing in clear around it.
        o.push(format!(
            "ifconfig-ipv6 {}/64 {BLOCKED_IPV6_GATEWAY}",
            blocked_ipv6_address(push.address)
        ));
        o.push("redirect-gateway def1 ipv6".into());
        o.push("block-ipv6".into());
    }
    for r in &push.routes {
        o.push(format!("route {} {}", r.network(), r.netmask()));
    }
    for d in &push.dns_servers {
        o.push(format!("dhcp-option DNS {d}"));
    }
    if !push.dns_servers.is_empty() {
        // Windows clients would also ask their other interfaces' servers.
        o.push("block-outside-dns".into());
    }
    o.push(format!("tun-mtu {}", push.mtu));
    if let Some(id) = n.peer_id {
        o.push(format!("peer-id {id}"));
    }
    o.push(format!("cipher {}", n.cipher.name()));
    let mut flags = Vec::new();
    if n.cc_exit {
        flags.push("cc-exit");
    }
    if n.tls_ekm {
        o.push("key-derivation tls-ekm".into());
        flags.push("tls-ekm");
    }
    if !flags.is_empty() {
        o.push(format!("protocol-flags {}", flags.join(" ")));
    }
    o
}

/// The PUSH_REPLY messages carrying `options`: one, or several ending in
/// `push-continuation 2` but the last (`push-continuation 1`).
pub fn messages(options: &[String]) -> Vec<String> {
    const HEAD: &str = "PUSH_REPLY";
    const MORE: &str = ",push-continuation 2";
    let mut bundles: Vec<String> = vec![HEAD.into()];
    for opt in options {
        let last = bundles.len() - 1;
        if bundles[last].len() + 1 + opt.len() + MORE.len() > MAX_MESSAGE && bundles[last] != HEAD {
            bundles.push(HEAD.into());
        }
        let last = bundles.len() - 1;
        bundles[last].push(',');
        bundles[last].push_str(opt);
    }
    let n = bundles.len();
    if n > 1 {
        for (i, b) in bundles.iter_mut().enumerate() {
            b.push_str(if i + 1 < n {
                MORE
            } else {
                ",push-continuation 1"
            });
        }
    }
    bundles
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(routes: usize, full: bool) -> Push {
        Push {
            address: "10.250.0.2".parse().unwrap(),
            prefix_len: 22,
            gateway: "10.250.0.1".parse().unwrap(),
            routes: (0..routes)
                .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap())
                .collect(),
            full_tunnel: full,
            client_networks: Vec::new(),
            dns_servers: vec!["192.168.1.53".parse().unwrap()],
            mtu: 1500,
            banner: None,
            keepalive: Duration::from_secs(10),
            session_timeout: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_split_tunnel_reply() {
        let n = Negotiated {
            cipher: Cipher::Aes256Gcm,
            tls_ekm: true,
            cc_exit: true,
            peer_id: Some(3),
        };
        let m = messages(&options(&push(2, false), &n, Duration::from_secs(35)));
        assert_eq!(
            m,
            [
                "PUSH_REPLY,topology subnet,route-gateway 10.250.0.1,ifconfig 10.250.0.2 255.255.252.0,\
ping 10,ping-restart 35,route 10.0.0.0 255.255.255.0,route 10.0.1.0 255.255.255.0,\
dhcp-option DNS 192.168.1.53,block-outside-dns,tun-mtu 1500,peer-id 3,cipher AES-256-GCM,\
key-derivation tls-ekm,protocol-flags cc-exit tls-ekm"
            ]
        );
    }

    #[test]
    fn a_long_reply_continues() {
        let n = Negotiated {
            cipher: Cipher::Chacha20Poly1305,
            tls_ekm: false,
            cc_exit: false,
            peer_id: None,
        };
        let opts = options(&push(200, true), &n, Duration::from_secs(35));
        assert!(opts.contains(&"redirect-gateway def1 ipv6".to_string()));
        assert!(opts.contains(&"block-ipv6".to_string()));
        assert!(
            opts.contains(&"ifconfig-ipv6 fd63:7670:6e00::afa:2/64 fd63:7670:6e00::1".to_string())
        );
        assert!(opts.contains(&"block-outside-dns".to_string()));
        let m = messages(&opts);
        assert!(m.len() > 5);
        for (i, msg) in m.iter().enumerate() {
            assert!(msg.len() <= MAX_MESSAGE, "{}", msg.len());
            assert!(msg.starts_with("PUSH_REPLY,"));
            let end = if i + 1 < m.len() {
                ",push-continuation 2"
            } else {
                ",push-continuation 1"
            };
            assert!(msg.ends_with(end));
        }
        let routes = m
            .iter()
            .map(|s| s.matches(",route ").count())
            .sum::<usize>();
        assert_eq!(routes, 200);
        assert!(!m.concat().contains("protocol-flags"));
    }
}
