//! Key method 2's data-channel keys for clients that do not offer the TLS
//! exporter (ssl.c, generate_key_expansion_openvpn_prf): the TLS 1.0 PRF
//! (P_MD5 xor P_SHA1 over the secret's two halves) makes a master secret
//! from the client's pre-master secret and both sides' first randoms, then
//! the key block from the master, both sides' second randoms and both
//! session ids.

use aws_lc_rs::hmac;
// aws-lc-rs has no MD5: HMAC-MD5 from RustCrypto.
use ::hmac::{Hmac, Mac};
use md5::Md5;

use super::keys::KEY_BLOCK_LEN;
use super::packet::SessionId;

/// What each side contributed.
pub struct Sources<'a> {
    /// The client's pre-master secret.
    pub pre_master: &'a [u8; 48],
    /// The client's first random.
    pub client_random1: &'a [u8; 32],
    /// The client's second random.
    pub client_random2: &'a [u8; 32],
    /// The server's first random.
    pub server_random1: &'a [u8; 32],
    /// The server's second random.
    pub server_random2: &'a [u8; 32],
    /// The client's session id.
    pub client_sid: &'a SessionId,
    /// The server's session id.
    pub server_sid: &'a SessionId,
}

/// P_hash with HMAC-SHA1 or HMAC-MD5, XORed into `out`.
fn p_hash_xor(sign: &dyn Fn(&[&[u8]]) -> Vec<u8>, seed: &[u8], out: &mut [u8]) {
    let mut a = sign(&[seed]);
    let mut done = 0;
    while done < out.len() {
        let block = sign(&[&a, seed]);
        for (o, b) in out[done..].iter_mut().zip(&block) {
            *o ^= b;
        }
        done += block.len();
        a = sign(&[&a]);
    }
}

/// The TLS 1.0 PRF of `secret` over `label` and `seed`, `out.len()` bytes.
pub fn tls1_prf(secret: &[u8], label: &[u8], seed: &[&[u8]], out: &mut [u8]) {
    let mut full = label.to_vec();
    for s in seed {
        full.extend_from_slice(s);
    }
    let half = secret.len().div_ceil(2);
    let (s1, s2) = (&secret[..half], &secret[secret.len() - half..]);
    out.fill(0);
    let md5 = |parts: &[&[u8]]| {
        // Any key length is valid for HMAC.
        let mut m = <Hmac<Md5> as Mac>::new_from_slice(s1).expect("HMAC takes any key");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    };
    p_hash_xor(&md5, &full, out);
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, s2);
    let sha1 = |parts: &[&[u8]]| {
        let mut c = hmac::Context::with_key(&key);
        for p in parts {
            c.update(p);
        }
        c.sign().as_ref().to_vec()
    };
    p_hash_xor(&sha1, &full, out);
}

/// The 256-byte key block of key method 2 without the exporter.
pub fn key_block(s: &Sources<'_>) -> [u8; KEY_BLOCK_LEN] {
    let mut master = [0u8; 48];
    tls1_prf(
        s.pre_master,
        b"OpenVPN master secret",
        &[s.client_random1, s.server_random1],
        &mut master,
    );
    let mut block = [0u8; KEY_BLOCK_LEN];
    tls1_prf(
        &master,
        b"OpenVPN key expansion",
        &[
            s.client_random2,
            s.server_random2,
            s.client_sid,
            s.server_sid,
        ],
        &mut block,
    );
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// OpenSSL's TLS1-PRF (MD5-SHA1), the stock implementation.
    fn openssl_prf(secret: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
        let out = std::process::Command::new("openssl")
            .args(["kdf", "-keylen", &len.to_string()])
            .args(["-kdfopt", "digest:MD5-SHA1"])
            .args(["-kdfopt", &format!("hexsecret:{}", hex(secret))])
            .args(["-kdfopt", &format!("hexseed:{}", hex(seed))])
            .arg("TLS1-PRF")
            .output()
            .expect("openssl (scripts/deps.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).replace([':', '\n'], "");
        (0..text.len() / 2)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_prf_is_openssls_tls1_prf() {
        for (secret_len, len) in [(48usize, 48usize), (48, 256), (47, 100), (1, 7)] {
            let secret: Vec<u8> = (0..secret_len).map(|i| (i * 7 + 1) as u8).collect();
            let seed: Vec<u8> = (0..64).map(|i| (255 - i) as u8).collect();
            let mut ours = vec![0u8; len];
            tls1_prf(&secret, b"OpenVPN master secret", &[&seed], &mut ours);
            let mut full = b"OpenVPN master secret".to_vec();
            full.extend_from_slice(&seed);
            assert_eq!(ours, openssl_prf(&secret, &full, len), "{secret_len} {len}");
        }
    }

    #[test]
    fn the_key_block_mixes_every_source() {
        let (pm, r, sid) = ([1u8; 48], [2u8; 32], [3u8; 8]);
        let base = Sources {
            pre_master: &pm,
            client_random1: &r,
            client_random2: &r,
            server_random1: &r,
            server_random2: &r,
            client_sid: &sid,
            server_sid: &sid,
        };
        let block = key_block(&base);
        let other_sid = [4u8; 8];
        let changed = key_block(&Sources {
            server_sid: &other_sid,
            ..base
        });
        assert_ne!(block, changed);
        assert_ne!(block[..128], block[128..]);
    }
}
