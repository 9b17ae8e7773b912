//! The tunnel's TLS record layer on any bytes a peer sends: measuring and
//! opening never panic; a record that opens yields content inside it, and
//! a record sealed with the peer's key opens to what was sealed.
#![no_main]

use cvpn_proto::record::{self, MAX_RECORD, RecordKey};
use libfuzzer_sys::fuzz_target;
use rustls::ConnectionTrafficSecrets;
use rustls::crypto::cipher::{AeadKey, Iv};

fn key() -> RecordKey {
    let secrets = ConnectionTrafficSecrets::Chacha20Poly1305 {
        key: AeadKey::from([3u8; 32]),
        iv: Iv::from([5u8; 12]),
    };
    RecordKey::new(&secrets, 0).expect("a valid key")
}

fuzz_target!(|data: &[u8]| {
    let mut rx = key();
    let mut buf = data.to_vec();
    let mut pos = 0;
    while let Ok(Some(n)) = record::record_len(&buf[pos..]) {
        assert!(n <= MAX_RECORD);
        if pos + n > buf.len() {
            break;
        }
        if let Ok((_, range)) = record::open(&mut rx, &mut buf[pos..pos + n]) {
            assert!(range.end <= n);
        }
        pos += n;
    }
    // Whatever the plaintext, sealing then opening gives it back (nothing
    // is sealed for nothing).
    if data.is_empty() {
        return;
    }
    let mut tx = key();
    let mut rx = key();
    let mut wire = Vec::new();
    let plain: Vec<u8> = data.iter().copied().take(record::MAX_PLAINTEXT).collect();
    record::seal(&mut tx, record::APPLICATION_DATA, &plain, &mut wire).expect("seals");
    let n = record::record_len(&wire).expect("sealed").expect("whole");
    let (typ, range) = record::open(&mut rx, &mut wire[..n]).expect("opens");
    assert_eq!(typ, record::APPLICATION_DATA);
    // Trailing zeros of the content are indistinguishable from padding.
    let trimmed = plain.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    assert!(range.len() >= trimmed);
    assert_eq!(&wire[range][..trimmed], &plain[..trimmed]);
});
