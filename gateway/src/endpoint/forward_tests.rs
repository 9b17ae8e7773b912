//! The per-packet path through a real endpoint core with a recording
//! inside and recording links: no root, no tun device.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use cvpn_pki::KeyType;
use cvpn_pki::store::{Request, Store};

use super::*;
use crate::config::Config;
use crate::endpoint::Inside;
use crate::endpoint::admission::restore_leases;
use crate::endpoint::pool::Pool;
use crate::endpoint::session::{Identity, Link, NewSession, Protocol};
use crate::tls::Acceptor;

type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

struct Recorder(Seen);

impl Inside for Recorder {
    fn write(&self, packet: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().push(packet.to_vec());
        Ok(packet.len())
    }
    fn take_replies(&self, _: &mut dyn FnMut(&[u8])) {}
}

impl Link for Recorder {
    fn send(&self, packet: &[u8]) -> bool {
        self.0.lock().unwrap().push(packet.to_vec());
        true
    }
}

fn endpoint(dir: &Path) -> (Endpoint, Seen) {
    endpoint_with(dir, DEFAULT_RULES)
}

const DEFAULT_RULES: &str = r#"
[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "eng"
[[authorization_rules]]
destination = "10.250.0.0/22"
"#;

fn config_text(dir: &Path, store: &Store, rules: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:4433"
client_cidr = "10.250.0.0/22"
state_dir = "{state}"
[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
[[target_networks]]
id = "tn-a"
interface = "eth1"
vpc_cidr = "192.168.0.0/16"
[[routes]]
destination = "10.250.0.0/22"
target = "local"
{rules}
"#,
        state = dir.join("state").display(),
        cert = store.cert_path("gw").display(),
        key = store.key_path("gw").display(),
        ca = store.ca_cert_path().display(),
    )
}

fn endpoint_with(dir: &Path, rules: &str) -> (Endpoint, Seen) {
    let store = Store::new(dir.join("pki"));
    store.init("Test CA", 30, KeyType::EcdsaP256).unwrap();
    let server = Request::Server { dns: &[], ips: &[] };
    store.issue("gw", server, 30, None).unwrap();
    let path = dir.join("endpoint.toml");
    std::fs::write(&path, config_text(dir, &store, rules)).unwrap();
    let config = Config::load(&path).unwrap();
    let policy = Policy::compile(&config).unwrap();
    let acceptor = Acceptor::new(&config.tls).unwrap();
    let leases = restore_leases(&config.state_dir, Pool::new(config.client_cidr));
    let inside = Seen::default();
    let ep = Endpoint::new(
        config,
        Some(path),
        policy,
        acceptor,
        leases,
        None,
        Box::new(Recorder(inside.clone())),
    );
    (ep, inside)
}

async fn session(ep: &Endpoint, cn: &str, groups: &[&str]) -> (Arc<Session>, Seen) {
    let admitted = ep.admit(cn).await.unwrap();
    let seen = Seen::default();
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let s = Arc::new(Session::new(NewSession {
        identity: Identity {
            common_name: cn.into(),
            serial: "01".into(),
            groups,
        },
        address: admitted.address,
        device: SocketAddr::from(([198, 18, 0, 2], 40000)),
        started: time::OffsetDateTime::now_utc(),
        protocol: Protocol::Cvpn,
        udp: false,
        link: Arc::new(Recorder(seen.clone())),
    }));
    ep.start(s.clone(), admitted);
    (s, seen)
}

/// A virtio-net header and an ICMP echo request from `src` to `dst`.
fn ping(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; VNET_HDR_LEN + 28];
    let ip = &mut p[VNET_HDR_LEN..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&28u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    ip[20] = 8;
    p
}

#[tokio::test]
async fn the_policy_decides_for_every_protocol_in_one_place() {
    let dir = tempfile::tempdir().unwrap();
    let (ep, inside) = endpoint(dir.path());
    let (eng, eng_seen) = session(&ep, "alice", &["eng"]).await;
    let (other, other_seen) = session(&ep, "bob", &[]).await;
    assert_ne!(eng.address, other.address);
    let target = Ipv4Addr::new(192, 168, 1, 20);
    let mut reply = reply_buffer();
    let policy = ep.policy.load();

    // Allowed: to the inside, unchanged.
    let p = ping(eng.address, target);
    ep.forward(&eng, &policy, &p, &mut reply);
    assert_eq!(inside.lock().unwrap().as_slice(), std::slice::from_ref(&p));
    assert_eq!(eng.traffic().ingress_packets, 1);

    // Denied: nothing inside, an ICMP admin-prohibited back to the client.
    ep.forward(&other, &policy, &ping(other.address, target), &mut reply);
    assert_eq!(inside.lock().unwrap().len(), 1);
    let back = other_seen.lock().unwrap().pop().unwrap();
    let icmp = &back[VNET_HDR_LEN..];
    assert_eq!(&icmp[12..16], &ep.gateway_addr.octets());
    assert_eq!((icmp[20], icmp[21]), (3, 13));
    assert_eq!(ep.drops.denied.load(Ordering::Relaxed), 1);

    // No route: net unreachable.
    ep.forward(
        &eng,
        &policy,
        &ping(eng.address, Ipv4Addr::new(8, 8, 8, 8)),
        &mut reply,
    );
    let back = eng_seen.lock().unwrap().pop().unwrap();
    assert_eq!((back[VNET_HDR_LEN + 20], back[VNET_HDR_LEN + 21]), (3, 0));

    // Forged source: dropped silently.
    ep.forward(&eng, &policy, &ping(other.address, target), &mut reply);
    assert_eq!(ep.drops.spoofed.load(Ordering::Relaxed), 1);
    assert!(eng_seen.lock().unwrap().is_empty());

    // Client to client (a local route and a rule): straight to the other
    // session, counted on both sides.
    let p = ping(eng.address, other.address);
    ep.forward(&eng, &policy, &p, &mut reply);
    assert_eq!(other_seen.lock().unwrap().as_slice(), &[p]);
    assert_eq!(other.traffic().egress_packets, 2);
    assert_eq!(inside.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn packets_from_the_inside_find_their_session_by_address() {
    let dir = tempfile::tempdir().unwrap();
    let (ep, _) = endpoint(dir.path());
    let (s, seen) = session(&ep, "alice", &[]).await;
    let from = Ipv4Addr::new(192, 168, 1, 20);
    ep.deliver(&ping(from, s.address));
    ep.deliver(&ping(from, Ipv4Addr::new(10, 250, 3, 3)));
    ep.deliver(&[0x60; 40]);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(s.traffic().egress_packets, 1);
    assert_eq!(s.traffic().egress_bytes, 28);
    assert_eq!(ep.drops.no_session.load(Ordering::Relaxed), 1);
    assert_eq!(ep.drops.malformed.load(Ordering::Relaxed), 0);

    // An ended session's address gets nothing, and goes back to the pool.
    let free = ep.free_addresses();
    ep.end(&s);
    ep.deliver(&ping(from, s.address));
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(ep.free_addresses(), free + 1);
}

#[tokio::test]
async fn a_reload_keeps_each_sessions_groups_and_refuses_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ep, inside) = endpoint(dir.path());
    let (eng, _) = session(&ep, "alice", &["eng"]).await;
    let target = Ipv4Addr::new(192, 168, 1, 20);
    let ops_only = Ipv4Addr::new(192, 168, 2, 20);
    let sent = |ep: &Endpoint, dst| {
        let before = inside.lock().unwrap().len();
        let policy = ep.policy.load();
        ep.forward(&eng, &policy, &ping(eng.address, dst), &mut reply_buffer());
        inside.lock().unwrap().len() > before
    };
    assert!(sent(&ep, target));
    assert!(!sent(&ep, ops_only));

    // A rule for a new group in front renumbers the groups: eng keeps
    // eng's rights, and does not get ops'.
    let store = Store::new(dir.path().join("pki"));
    let rules = r#"
[[authorization_rules]]
destination = "192.168.2.0/24"
access_group = "ops"
[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "eng"
"#;
    let path = dir.path().join("endpoint.toml");
    std::fs::write(&path, config_text(dir.path(), &store, rules)).unwrap();
    assert_eq!(ep.reload().unwrap(), ["authorization_rules"]);
    assert!(sent(&ep, target));
    assert!(!sent(&ep, ops_only));

    // Nothing of a refused file applies.
    let cidr = config_text(dir.path(), &store, "").replace("10.250.0.0/22", "10.251.0.0/22");
    std::fs::write(&path, cidr).unwrap();
    let e = ep.reload().unwrap_err().to_string();
    assert!(e.starts_with("needs a restart: client_cidr"), "{e}");
    assert!(sent(&ep, target));
    std::fs::write(&path, "client_cidr = 7").unwrap();
    assert!(ep.reload().is_err());
    assert!(sent(&ep, target));
}
