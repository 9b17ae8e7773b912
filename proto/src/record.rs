//! TLS 1.3 record protection (RFC 8446 section 5) for the tunnel, done in
//! place in the caller's buffers: rustls negotiates the session and hands
//! over the traffic secrets (its "kernel connection" API, made for kTLS);
//! this module seals and opens the records. rustls' own record path copies
//! every record into a fresh allocation, which is most of what a record
//! costs on an idle, cache-cold tunnel (bench/README.md).
//!
//! Pure: no I/O. The stream around it is in `tls.rs`.

use aws_lc_rs::aead::{
    AES_128_GCM, AES_256_GCM, Aad, Algorithm, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce,
    UnboundKey,
};
use rustls::ConnectionTrafficSecrets;

/// Record header: outer type, legacy version, 16-bit length.
pub const RECORD_HEADER: usize = 5;
/// Most plaintext one record carries.
pub const MAX_PLAINTEXT: usize = 1 << 14;
const TAG_LEN: usize = 16;
/// RFC 8446 5.2: a record body is at most 2^14 + 256 bytes.
pub const MAX_BODY: usize = MAX_PLAINTEXT + 256;
pub const MAX_RECORD: usize = RECORD_HEADER + MAX_BODY;
/// Room a record adds to its plaintext when sealed.
pub const OVERHEAD: usize = RECORD_HEADER + 1 + TAG_LEN;

const OUTER_TYPE: u8 = 23;
const LEGACY_VERSION: [u8; 2] = [3, 3];

/// Inner content types this tunnel uses.
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record with outer type {0} after the handshake")]
    OuterType(u8),
    #[error("record with version {0:#06x}")]
    Version(u16),
    #[error("record of {0} bytes (at most {MAX_BODY})")]
    Overflow(usize),
    #[error("record of {0} bytes is too short to be sealed")]
    Short(usize),
    #[error("record failed authentication")]
    BadRecord,
    #[error("record with no content type")]
    NoContentType,
    #[error("cipher suite unknown to the record layer")]
    UnknownSuite,
    #[error("traffic key rejected")]
    BadKey,
    #[error("record content of {0} bytes (at most {MAX_PLAINTEXT} and its type)")]
    RecordOverflow(usize),
    #[error("record sequence number exhausted: the key must be updated first")]
    Exhausted,
}

impl RecordError {
    /// The alert a peer is sent for this error (RFC 8446 6.2).
    pub fn alert(&self) -> rustls::AlertDescription {
        use rustls::AlertDescription as A;
        match self {
            RecordError::BadRecord => A::BadRecordMac,
            RecordError::Overflow(_) | RecordError::RecordOverflow(_) => A::RecordOverflow,
            RecordError::OuterType(_) | RecordError::NoContentType => A::UnexpectedMessage,
            RecordError::Version(_) | RecordError::Short(_) => A::DecodeError,
            RecordError::UnknownSuite | RecordError::BadKey | RecordError::Exhausted => {
                A::InternalError
            }
        }
    }
}

/// One direction's traffic key and record sequence number.
pub struct RecordKey {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl RecordKey {
    pub fn new(secrets: &ConnectionTrafficSecrets, seq: u64) -> Result<Self, RecordError> {
        let (alg, key, iv): (&'static Algorithm, _, _) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(RecordError::UnknownSuite),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| RecordError::BadKey)?;
        let iv = <[u8; NONCE_LEN]>::try_from(iv.as_ref()).map_err(|_| RecordError::BadKey)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// Records protected with this key so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The per-record nonce (RFC 8446 5.3); each sequence number once. The
    /// number never wraps (RFC 8446 5.3): at the last one the key is spent
    /// and must be updated, whatever the cipher.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        if self.seq == u64::MAX {
            return Err(RecordError::Exhausted);
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

fn header(body_len: usize) -> [u8; RECORD_HEADER] {
    let [hi, lo] = (body_len as u16).to_be_bytes();
    [OUTER_TYPE, LEGACY_VERSION[0], LEGACY_VERSION[1], hi, lo]
}

/// Appends `plaintext` to `out` as records of inner type `typ`, at most
/// MAX_PLAINTEXT each: the bytes are copied once and sealed where they lie.
/// Err: the key's sequence numbers ran out (nothing more is appended).
pub fn seal(
    key: &mut RecordKey,
    typ: u8,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    out.reserve(plaintext.len() + plaintext.len().div_ceil(MAX_PLAINTEXT) * OVERHEAD);
    for chunk in plaintext.chunks(MAX_PLAINTEXT) {
        let nonce = key.next_nonce()?;
        let hdr = header(chunk.len() + 1 + TAG_LEN);
        out.extend_from_slice(&hdr);
        let start = out.len();
        out.extend_from_slice(chunk);
        out.push(typ);
        // Sealing fails only for inputs far beyond MAX_PLAINTEXT.
        let tag = key
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(hdr), &mut out[start..])
            .expect("a record is within the AEAD's limits");
        out.extend_from_slice(tag.as_ref());
    }
    Ok(())
}

/// The length of the whole record at the front of `buf`, once its header
/// is there: Ok(None) while fewer than RECORD_HEADER bytes are.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(hdr) = buf.first_chunk::<RECORD_HEADER>() else {
        return Ok(None);
    };
    if hdr[0] != OUTER_TYPE {
        return Err(RecordError::OuterType(hdr[0]));
    }
    if hdr[1..3] != LEGACY_VERSION {
        return Err(RecordError::Version(u16::from_be_bytes([hdr[1], hdr[2]])));
    }
    let body = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
    if body > MAX_BODY {
        return Err(RecordError::Overflow(body));
    }
    if body < 1 + TAG_LEN {
        return Err(RecordError::Short(body));
    }
    Ok(Some(RECORD_HEADER + body))
}

/// Opens one whole record (header included, as measured by `record_len`)
/// in place. Returns its inner content type and the range of `record`
/// that holds the content.
pub fn open(
    key: &mut RecordKey,
    record: &mut [u8],
) -> Result<(u8, std::ops::Range<usize>), RecordError> {
    if record.len() < RECORD_HEADER + 1 + TAG_LEN {
        return Err(RecordError::Short(record.len()));
    }
    let (hdr, body) = record.split_at_mut(RECORD_HEADER);
    let nonce = key.next_nonce()?;
    let inner = key
        .key
        .open_in_place(nonce, Aad::from(&*hdr), body)
        .map_err(|_| RecordError::BadRecord)?;
    // RFC 8446 5.2/5.4: the inner plaintext (content, type, padding) is at
    // most 2^14 + 1 bytes, however much the body's limit would allow.
    if inner.len() > MAX_PLAINTEXT + 1 {
        return Err(RecordError::RecordOverflow(inner.len()));
    }
    // The content type is the last non-zero byte; zeros after it are padding.
    let typ_at = inner
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(RecordError::NoContentType)?;
    Ok((inner[typ_at], RECORD_HEADER..RECORD_HEADER + typ_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn pair() -> (RecordKey, RecordKey) {
        let s = || ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([7u8; 32]),
            iv: Iv::from([9u8; 12]),
        };
        (
            RecordKey::new(&s(), 0).unwrap(),
            RecordKey::new(&s(), 0).unwrap(),
        )
    }

    fn open_all(key: &mut RecordKey, mut buf: Vec<u8>) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(n) = record_len(&buf[pos..]).unwrap() {
            let (typ, range) = open(key, &mut buf[pos..pos + n]).unwrap();
            out.push((typ, buf[pos..pos + n][range].to_vec()));
            pos += n;
        }
        assert_eq!(pos, buf.len());
        out
    }

    #[test]
    fn large_writes_split_into_records_that_open_in_order() {
        let (mut tx, mut rx) = pair();
        let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        seal(&mut tx, APPLICATION_DATA, &data, &mut wire).unwrap();
        seal(&mut tx, HANDSHAKE, &[24, 0, 0, 1, 0], &mut wire).unwrap();
        assert_eq!(wire.len(), data.len() + 4 * OVERHEAD + 5);
        let recs = open_all(&mut rx, wire);
        assert_eq!(recs.len(), 4);
        let joined: Vec<u8> = recs[..3].iter().flat_map(|r| r.1.clone()).collect();
        assert_eq!(joined, data);
        assert_eq!(recs[3], (HANDSHAKE, vec![24, 0, 0, 1, 0]));
        assert_eq!((tx.seq(), rx.seq()), (4, 4));
    }

    #[test]
    fn tampered_or_replayed_records_fail() {
        let (mut tx, mut rx) = pair();
        let mut wire = Vec::new();
        seal(&mut tx, APPLICATION_DATA, b"ping", &mut wire).unwrap();
        let mut copy = wire.clone();
        copy[7] ^= 1;
        assert_eq!(
            open(&mut rx, &mut copy).unwrap_err(),
            RecordError::BadRecord
        );
        // The failed attempt used sequence number 0: the genuine record no
        // longer opens either, so a session that saw a forgery must end.
        assert_eq!(
            open(&mut rx, &mut wire.clone()).unwrap_err(),
            RecordError::BadRecord
        );
    }

    #[test]
    fn headers_are_checked_before_any_decryption() {
        assert_eq!(record_len(&[23, 3, 3, 0]), Ok(None));
        assert_eq!(
            record_len(&[22, 3, 3, 0, 40]),
            Err(RecordError::OuterType(22))
        );
        assert_eq!(
            record_len(&[23, 3, 1, 0, 40]),
            Err(RecordError::Version(0x0301))
        );
        assert_eq!(
            record_len(&[23, 3, 3, 0x43, 0x01]),
            Err(RecordError::Overflow(0x4301))
        );
        assert_eq!(record_len(&[23, 3, 3, 0, 16]), Err(RecordError::Short(16)));
        assert_eq!(record_len(&[23, 3, 3, 0x41, 0x00]), Ok(Some(5 + 0x4100)));
    }

    #[test]
    fn oversized_inner_plaintext_is_a_record_overflow() {
        let (mut tx, mut rx) = pair();
        // A peer's record with 2^14 + 1 content bytes and its type: within
        // the body's limit, over the plaintext's.
        let mut wire = Vec::new();
        let big = vec![1u8; MAX_PLAINTEXT + 1];
        let hdr = header(big.len() + 1 + TAG_LEN);
        wire.extend_from_slice(&hdr);
        wire.extend_from_slice(&big);
        wire.push(APPLICATION_DATA);
        let nonce = tx.next_nonce().unwrap();
        let tag = tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(hdr), &mut wire[RECORD_HEADER..])
            .unwrap();
        wire.extend_from_slice(tag.as_ref());
        let e = open(&mut rx, &mut wire).unwrap_err();
        assert_eq!(e, RecordError::RecordOverflow(MAX_PLAINTEXT + 2));
        assert_eq!(e.alert(), rustls::AlertDescription::RecordOverflow);
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        let s = || ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from([7u8; 32]),
            iv: Iv::from([9u8; 12]),
        };
        let mut tx = RecordKey::new(&s(), u64::MAX - 1).unwrap();
        let mut rx = RecordKey::new(&s(), u64::MAX - 1).unwrap();
        let mut wire = Vec::new();
        seal(&mut tx, APPLICATION_DATA, b"last", &mut wire).unwrap();
        assert_eq!(
            seal(&mut tx, APPLICATION_DATA, b"one more", &mut wire),
            Err(RecordError::Exhausted)
        );
        assert_eq!(tx.seq(), u64::MAX);
        let n = record_len(&wire).unwrap().unwrap();
        open(&mut rx, &mut wire[..n]).unwrap();
        let mut again = wire.clone();
        assert_eq!(open(&mut rx, &mut again), Err(RecordError::Exhausted));
    }

    #[test]
    fn short_slices_are_errors_not_panics() {
        let (_, mut rx) = pair();
        for n in 0..22 {
            assert_eq!(
                open(&mut rx, &mut vec![23; n]).unwrap_err(),
                RecordError::Short(n)
            );
        }
    }

    #[test]
    fn padding_is_stripped_and_all_zero_content_is_refused() {
        let (mut tx, mut rx) = pair();
        let mut wire = Vec::new();
        // Sealed as type 0 with padding: no content type at all.
        seal(&mut tx, 0, &[0, 0, 0], &mut wire).unwrap();
        seal(&mut tx, 0, &[b'h', b'i', APPLICATION_DATA, 0, 0], &mut wire).unwrap();
        let n = record_len(&wire).unwrap().unwrap();
        let (first, second) = wire.split_at_mut(n);
        assert_eq!(
            open(&mut rx, first).unwrap_err(),
            RecordError::NoContentType
        );
        let (typ, range) = open(&mut rx, second).unwrap();
        assert_eq!((typ, &second[range]), (APPLICATION_DATA, &b"hi"[..]));
    }
}
