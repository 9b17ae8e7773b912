//! The datagram opener on any bytes from the network: it never panics,
//! nothing forged opens, and a datagram that opened once never opens again.
#![no_main]

use cvpn_proto::datagram::{Opener, OpeningKey, Sealer, SealingKey};
use libfuzzer_sys::fuzz_target;

const SESSION: u64 = 0x1122_3344_5566_7788;

fuzz_target!(|data: &[u8]| {
    let mut opener = Opener::new(OpeningKey::from_bytes([9u8; 32]), SESSION);
    let mut forged = data.to_vec();
    assert!(
        opener.open(&mut forged).is_err(),
        "a forged datagram opened"
    );
    // A genuine one opens once; its replay is refused.
    let mut sealer = Sealer::new(SealingKey::from_bytes([9u8; 32]), SESSION);
    let payload: Vec<u8> = data.iter().copied().take(1400).collect();
    let mut out = vec![0u8; payload.len() + cvpn_proto::datagram::OVERHEAD];
    let n = sealer
        .seal(cvpn_proto::datagram::KIND_PACKET, &payload, &mut out)
        .expect("fits");
    let mut first = out[..n].to_vec();
    let opened = opener.open(&mut first).expect("genuine");
    assert_eq!(opened.payload, &payload[..]);
    let mut again = out[..n].to_vec();
    assert!(opener.open(&mut again).is_err(), "a replay opened");
});
