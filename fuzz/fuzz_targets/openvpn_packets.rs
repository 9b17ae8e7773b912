//! What an OpenVPN peer sends before and after authenticating, on any
//! bytes: control packets parse to what re-encodes to the same bytes, key
//! method 2 messages parse or are refused, nothing forged opens as a data
//! packet or unwraps as tls-crypt, and a genuine data packet opens once.
#![no_main]

use cvpn_gw::protocol::openvpn::channel::DataChannel;
use cvpn_gw::protocol::openvpn::data::Sealer;
use cvpn_gw::protocol::openvpn::keys::{self, Cipher, KEY_BLOCK_LEN, server_keys};
use cvpn_gw::protocol::openvpn::packet::ControlPacket;
use cvpn_gw::protocol::openvpn::tls_crypt::{StaticKey, TlsCrypt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
