//! What an OpenVPN peer sends before and after authenticating, on any
//! bytes: control packets parse to what re-encodes to the same bytes, key
//! method 2 messages parse or are refused, nothing forged opens as a data
//! packet or unwraps as tls-crypt, and a genuine data packet opens once.
//! The same bytes, cut into a sequence of control packets (resets, acks,
//! soft resets, any key id and message id, payloads up to beyond the
//! largest taken), drive a control channel: it ends or goes on, never
//! loops, never panics, and keeps its queues bounded.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cvpn_gw::config::{DEFAULT_RENEG, TlsFiles, TlsVersion};
use cvpn_gw::protocol::openvpn::control::Control;
use cvpn_gw::protocol::openvpn::packet::{
    ACK_V1, Acks, CONTROL_V1, HARD_RESET_CLIENT_V2, SOFT_RESET_V1,
};
use cvpn_gw::tls::Acceptor;

use cvpn_gw::protocol::openvpn::channel::DataChannel;
use cvpn_gw::protocol::openvpn::data::Sealer;
use cvpn_gw::protocol::openvpn::keys::{self, Cipher, KEY_BLOCK_LEN, server_keys};
use cvpn_gw::protocol::openvpn::packet::ControlPacket;
use cvpn_gw::protocol::openvpn::tls_crypt::{StaticKey, TlsCrypt};
use libfuzzer_sys::fuzz_target;

/// The endpoint's TLS side, made once in a directory of its own.
fn acceptor() -> &'static Acceptor {
    static ACCEPTOR: OnceLock<Acceptor> = OnceLock::new();
    ACCEPTOR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cvpn-fuzz-pki-{}", std::process::id()));
        let store = cvpn_pki::store::Store::new(&dir);
        store
            .init("Fuzz CA", 30, cvpn_pki::KeyType::EcdsaP256)
            .expect("CA");
        let server = cvpn_pki::store::Request::Server { dns: &[], ips: &[] };
        store
            .issue("vpn.example.com", server, 30, None)
            .expect("server certificate");
        Acceptor::new(&TlsFiles {
            cert: store.cert_path("vpn.example.com"),
            key: store.key_path("vpn.example.com"),
            client_ca: store.ca_cert_path(),
            crl: Some(store.crl_path()),
            tls_crypt: None,
            min_version: TlsVersion::Tls12,
            reneg: DEFAULT_RENEG,
        })
        .expect("TLS configuration")
    })
}

/// Cuts `data` into control packets: a length byte (times 16, so
/// oversize ones come too), then opcode, key id, session id choice, acks
/// and message id bytes, then the payload.
fn drive_control(data: &[u8]) {
    let client = [1u8; 8];
    let server = [2u8; 8];
    let factory = Box::new(|| acceptor().for_openvpn().map_err(|e| e.to_string()));
    let t0 = Instant::now();
    let Ok(mut c) = Control::after_cookie(client, server, factory, t0) else {
        return;
    };
    let mut rest = data;
    let mut step = 0u64;
    while let [len, op, key, who, nacks, id, tail @ ..] = rest {
        step += 1;
        let n = (usize::from(*len) * 16).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        let opcode = [CONTROL_V1, ACK_V1, SOFT_RESET_V1, HARD_RESET_CLIENT_V2][usize::from(op % 4)];
        let mut acks = Acks::default();
        for i in 0..(nacks % 9) {
            acks.push(u32::from(nacks.wrapping_add(i)) % 16);
        }
        let p = ControlPacket {
            opcode,
            key_id: key & 7,
            session_id: if who & 1 == 0 { client } else { [*who; 8] },
            remote_session_id: (!acks.is_empty()).then_some(if who & 2 == 0 {
                server
            } else {
                [*who; 8]
            }),
            acks,
            message_id: (opcode != ACK_V1).then_some(u32::from(*id % 20)),
            payload,
        };
        let now = t0 + Duration::from_millis(step * 100);
        if c.receive(&p, now).is_err() {
            return;
        }
        let mut sent = 0;
        while c.poll_transmit(now).is_some() {
            sent += 1;
            assert!(sent < 1000, "the control channel sends without end");
        }
        while c.poll_event().is_some() {}
        if c.on_timeout(now).is_err() {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    drive_control(data);
    if let Ok(p) = ControlPacket::parse(data) {
        let mut again = Vec::new();
        p.encode(&mut again);
        assert_eq!(again, data, "a control packet re-encodes to its bytes");
    }
    let _ = keys::parse_client_keys(data);
    let _ = keys::PeerInfo::parse(&String::from_utf8_lossy(data));

    let key_text = format!(
        "-----BEGIN OpenVPN Static key V1-----\n{}\n-----END OpenVPN Static key V1-----\n",
        "5a".repeat(256)
    );
    let key = StaticKey::parse(&key_text).expect("a key");
    assert!(
        TlsCrypt::server(&key).unwrap(data).is_err(),
        "forged tls-crypt unwrapped"
    );

    let block = [0x33u8; KEY_BLOCK_LEN];
    let keys = server_keys(&block, Cipher::Aes256Gcm);
    let channel = DataChannel::new(7);
    channel.install(0, Cipher::Aes256Gcm, &keys);
    let mut forged = data.to_vec();
    assert!(
        channel.open(&mut forged).is_err(),
        "a forged data packet opened"
    );
    // The client's side seals with what the server opens with.
    let mut client = Sealer::new(Cipher::Aes256Gcm, &keys.decrypt, 0, Some(7));
    let payload: Vec<u8> = data.iter().copied().take(1500).collect();
    let mut out = vec![0u8; payload.len() + 64];
    let n = client.seal(&payload, &mut out).expect("fits");
    let mut first = out[..n].to_vec();
    assert!(
        channel.open(&mut first).is_ok(),
        "a genuine packet did not open"
    );
    let mut replay = out[..n].to_vec();
    assert!(channel.open(&mut replay).is_err(), "a replay opened");
});
