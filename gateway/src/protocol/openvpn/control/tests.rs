//! The control channel against a rustls client playing the OpenVPN
//! client's part: reset, TLS handshake, key method 2, PUSH_REQUEST and a
//! renegotiation, with the keys both sides derive compared.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use cvpn_pki::KeyType;
use cvpn_pki::store::{Request, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;
use crate::config::TlsFiles;
use crate::protocol::openvpn::keys::{self, KEY_BLOCK_LEN, server_keys};
use crate::protocol::openvpn::packet::{CONTROL_V1, HARD_RESET_CLIENT_V2, SOFT_RESET_V1};
use crate::tls::Acceptor;

pub(super) struct Peer {
    pub(super) sid: SessionId,
    pub(super) key_id: u8,
    pub(super) tls: ClientConnection,
    pub(super) reliable: Reliable,
    pub(super) plaintext: Vec<u8>,
}

pub(super) fn setup(dir: &std::path::Path) -> (TlsFactory, Arc<ClientConfig>) {
    let store = Store::new(dir);
    store.init("Test CA", 30, KeyType::EcdsaP256).unwrap();
    let server = Request::Server { dns: &[], ips: &[] };
    store.issue("vpn.example.com", server, 30, None).unwrap();
    let groups = ["eng".to_string()];
    store
        .issue("alice", Request::Client { groups: &groups }, 30, None)
        .unwrap();
    let acceptor = Acceptor::new(&TlsFiles {
        cert: store.cert_path("vpn.example.com"),
        key: store.key_path("vpn.example.com"),
        client_ca: store.ca_cert_path(),
        crl: Some(store.crl_path()),
        tls_crypt: None,
        min_version: crate::config::TlsVersion::Tls12,
        reneg: crate::config::DEFAULT_RENEG,
    })
    .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(crate::tls::load_certs(&store.ca_cert_path()).unwrap());
    let chain = vec![CertificateDer::from_pem_file(store.cert_path("alice")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(store.key_path("alice")).unwrap();
    let client = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let factory: TlsFactory = Box::new(move || acceptor.for_openvpn().map_err(|e| e.to_string()));
    (factory, Arc::new(client))
}

impl Peer {
    pub(super) fn new(config: &Arc<ClientConfig>, sid: SessionId, key_id: u8) -> Peer {
        let name = ServerName::try_from("vpn.example.com").unwrap();
        Peer {
            sid,
            key_id,
            tls: ClientConnection::new(config.clone(), name).unwrap(),
            reliable: Reliable::new(false),
            plaintext: Vec::new(),
        }
    }

    /// The client's packets due: TLS records as P_CONTROL_V1, acks.
    pub(super) fn packets(&mut self, server: SessionId, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out).unwrap();
        }
        for chunk in out.chunks(MAX_CONTROL_PAYLOAD) {
            self.reliable.send(CONTROL_V1, chunk.to_vec());
        }
        let mut wire = Vec::new();
        loop {
            let mut acks = Acks::default();
            for id in self.reliable.take_acks(MAX_ACKS) {
                acks.push(id);
            }
            let remote = (!acks.is_empty()).then_some(server);
            let mut p = Vec::new();
            match self.reliable.poll_transmit(now) {
                Some(t) => ControlPacket {
                    opcode: t.opcode,
                    key_id: self.key_id,
                    session_id: self.sid,
                    acks,
                    remote_session_id: remote,
                    message_id: Some(t.id),
                    payload: t.payload,
                }
                .encode(&mut p),
                None if !acks.is_empty() => ControlPacket {
                    opcode: ACK_V1,
                    key_id: self.key_id,
                    session_id: self.sid,
                    acks,
                    remote_session_id: remote,
                    message_id: None,
                    payload: b"",
                }
                .encode(&mut p),
                None => return wire,
            }
            wire.push(p);
        }
    }

    /// A packet from the server.
    pub(super) fn receive(&mut self, wire: &[u8]) -> SessionId {
        let p = ControlPacket::parse(wire).unwrap();
        assert_eq!(p.key_id, self.key_id);
        self.reliable.acknowledged(p.acks.as_slice());
        if let Some(id) = p.message_id {
            self.reliable.receive(id, p.opcode, p.payload);
        }
        while let Some((op, payload)) = self.reliable.next_in_order() {
            if op == CONTROL_V1 {
                self.tls.read_tls(&mut &payload[..]).unwrap();
                self.tls.process_new_packets().unwrap();
            }
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.tls.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            self.plaintext.extend_from_slice(&buf[..n]);
        }
        p.session_id
    }

    /// The key method 2 message of a 2.6 client.
    pub(super) fn send_keys(&mut self) {
        self.send_keys_with("IV_VER=2.6.14\nIV_PROTO=990\nIV_CIPHERS=AES-256-GCM:AES-128-GCM\n");
    }

    /// A key method 2 message with `info` as its peer info.
    pub(super) fn send_keys_with(&mut self, info: &str) {
        let mut m = vec![0, 0, 0, 0, 2];
        m.extend_from_slice(&[7; 48 + 64]);
        let mut s = |t: &str| {
            m.extend_from_slice(&(t.len() as u16 + 1).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
            m.push(0);
        };
        s("V4,dev-type tun,tls-client");
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&(info.len() as u16 + 1).to_be_bytes());
        m.extend_from_slice(info.as_bytes());
        m.push(0);
        self.tls.writer().write_all(&m).unwrap();
    }
}

/// Moves packets both ways until neither side has anything to send.
pub(super) fn exchange(c: &mut Control, peer: &mut Peer, server: &mut SessionId, now: Instant) {
    for _ in 0..50 {
        let mut quiet = true;
        while let Some(p) = c.poll_transmit(now) {
            *server = peer.receive(&p);
            quiet = false;
        }
        for p in peer.packets(*server, now) {
            c.receive(&ControlPacket::parse(&p).unwrap(), now).unwrap();
            quiet = false;
        }
        if quiet {
            return;
        }
    }
    panic!("no end to the exchange");
}

pub(super) fn events(c: &mut Control) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

pub(super) struct Started {
    pub(super) c: Control,
    pub(super) peer: Peer,
    pub(super) server: SessionId,
    pub(super) config: Arc<ClientConfig>,
    pub(super) now: Instant,
    _dir: tempfile::TempDir,
}

/// A TCP client through its reset and TLS handshake; with `info`, also
/// through key method 2 and the first key's activation.
pub(super) fn start(info: Option<&str>) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let (factory, config) = setup(dir.path());
    let now = Instant::now();
    let mut peer = Peer::new(&config, [1; 8], 0);
    let mut reset = Vec::new();
    ControlPacket {
        opcode: HARD_RESET_CLIENT_V2,
        key_id: 0,
        session_id: peer.sid,
        acks: Acks::default(),
        remote_session_id: None,
        message_id: Some(0),
        payload: b"",
    }
    .encode(&mut reset);
    peer.reliable.send(HARD_RESET_CLIENT_V2, Vec::new());
    let _ = peer.reliable.poll_transmit(now);
    let mut c =
        Control::from_reset(&ControlPacket::parse(&reset).unwrap(), [2; 8], factory, now).unwrap();
    let mut server = [0u8; 8];
    exchange(&mut c, &mut peer, &mut server, now);
    if let Some(info) = info {
        peer.send_keys_with(info);
        exchange(&mut c, &mut peer, &mut server, now);
    }
    Started {
        c,
        peer,
        server,
        config,
        now,
        _dir: dir,
    }
}

#[test]
fn a_client_authenticates_gets_keys_asks_for_its_push_and_renegotiates() {
    let Started {
        mut c,
        mut peer,
        mut server,
        config: client_config,
        now,
        _dir,
    } = start(None);
    assert_eq!(server, [2; 8]);
    assert!(!peer.tls.is_handshaking());
    assert!(events(&mut c).is_empty(), "nothing before the key exchange");

    peer.send_keys();
    exchange(&mut c, &mut peer, &mut server, now);
    let ev = events(&mut c);
    let Some(Event::Authenticated {
        identity,
        cipher,
        tls_ekm,
        peer_info,
    }) = ev.first()
    else {
        panic!("not authenticated");
    };
    assert_eq!(identity.common_name, "alice");
    assert_eq!(identity.groups, ["eng"]);
    assert_eq!((*cipher, *tls_ekm), (Cipher::Aes256Gcm, true));
    assert_eq!(peer_info.version.as_deref(), Some("2.6.14"));
    // Both sides derive the same keys from the exporter.
    let block = peer
        .tls
        .export_keying_material([0u8; KEY_BLOCK_LEN], keys::EKM_LABEL, None)
        .unwrap();
    let expected = server_keys(&block, Cipher::Aes256Gcm);
    assert!(matches!(&ev[1], Event::Keys { key_id: 0, keys, .. } if *keys == expected));
    assert!(matches!(ev[2], Event::Active { key_id: 0 }));
    // The server's key method 2 message reached the client.
    assert_eq!(&peer.plaintext[..5], &[0, 0, 0, 0, 2]);

    peer.tls.writer().write_all(b"PUSH_REQUEST\0").unwrap();
    exchange(&mut c, &mut peer, &mut server, now);
    assert!(events(&mut c) == [Event::PushRequest]);
    peer.plaintext.clear();
    c.send_message("PUSH_REPLY,ifconfig 10.250.0.2 255.255.252.0")
        .unwrap();
    exchange(&mut c, &mut peer, &mut server, now);
    assert_eq!(
        peer.plaintext,
        b"PUSH_REPLY,ifconfig 10.250.0.2 255.255.252.0\0"
    );

    // A soft reset with key id 1: a new TLS session, new keys, the old
    // key retired after the transition window.
    let mut again = Peer::new(&client_config, peer.sid, 1);
    again.reliable.send(SOFT_RESET_V1, Vec::new());
    exchange(&mut c, &mut again, &mut server, now);
    again.send_keys();
    exchange(&mut c, &mut again, &mut server, now);
    let ev = events(&mut c);
    assert!(
        matches!(
            ev[..],
            [Event::Keys { key_id: 1, .. }, Event::Active { key_id: 1 }]
        ),
        "{}",
        ev.len()
    );
    c.on_timeout(now + TRANSITION_WINDOW).unwrap();
    assert!(events(&mut c) == [Event::Retired { key_id: 0 }]);
}

#[test]
fn an_unfinished_handshake_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (factory, _) = setup(dir.path());
    let now = Instant::now();
    let mut c = Control::after_cookie([1; 8], [2; 8], factory, now).unwrap();
    assert!(c.on_timeout(now + HAND_WINDOW / 2).is_ok());
    let e = c.on_timeout(now + HAND_WINDOW).unwrap_err();
    assert!(e.contains("did not finish"), "{e}");
    // Garbage in a control packet is a TLS failure, with the alert sent.
    let mut c = Control::after_cookie([1; 8], [2; 8], Box::new(|| Err("x".into())), now);
    assert!(c.is_err());
    let (factory, _) = setup(tempfile::tempdir().unwrap().path());
    c = Control::after_cookie([1; 8], [2; 8], factory, now);
    let mut c = c.unwrap();
    let p = ControlPacket {
        opcode: CONTROL_V1,
        key_id: 0,
        session_id: [1; 8],
        acks: Acks::default(),
        remote_session_id: None,
        message_id: Some(1),
        payload: &[0x16, 3, 1, 0, 5, 9, 9, 9, 9, 9],
    };
    let e = c.receive(&p, now).unwrap_err();
    assert!(e.starts_with("TLS handshake failed"), "{e}");
    // A packet of another session is ignored.
    let stray = ControlPacket {
        session_id: [9; 8],
        ..p
    };
    assert!(c.receive(&stray, now).is_ok());
}
