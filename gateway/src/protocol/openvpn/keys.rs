//! Key method 2 (ssl.c): once TLS is up, each side sends its key source
//! material, its options string and (the client) its peer info over the
//! TLS channel. Data-channel keys come from the TLS exporter when the
//! client offers it (`key-derivation tls-ekm`), else from the TLS 1.0 PRF
//! over the key sources; the cipher is negotiated from the client's
//! IV_CIPHERS (NCP).

use thiserror::Error;

/// The exporter label of `key-derivation tls-ekm`.
pub const EKM_LABEL: &[u8] = b"EXPORTER-OpenVPN-datakeys";
/// Bytes of key material: two directions of a 64-byte cipher key and a
/// 64-byte HMAC key (struct key2).
pub const KEY_BLOCK_LEN: usize = 256;
/// Longest options string (TLS_OPTIONS_LEN).
const MAX_OPTIONS: usize = 512;
/// Longest peer info string kept: what a 2.6 client sends with every
/// optional variable is under 1 KiB.
const MAX_PEER_INFO: usize = 4096;

/// IV_PROTO bits (ssl.h).
pub mod iv_proto {
    /// The client takes P_DATA_V2.
    pub const DATA_V2: u32 = 1 << 1;
    /// The client takes a PUSH_REPLY before it asks.
    pub const REQUEST_PUSH: u32 = 1 << 2;
    /// The client derives data keys with the TLS exporter.
    pub const TLS_KEY_EXPORT: u32 = 1 << 3;
    /// The client announces its exit on the control channel.
    pub const CC_EXIT_NOTIFY: u32 = 1 << 7;
    /// The client takes `AUTH_FAILED,TEMP` (and retries after the backoff).
    pub const AUTH_FAIL_TEMP: u32 = 1 << 8;
}

/// Why a key method 2 message was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not a key method 2 message.
    #[error("not a key method 2 message")]
    NotKeyMethod2,
    /// Shorter than its fields.
    #[error("key method 2 message truncated")]
    Truncated,
    /// A string over its limit.
    #[error("key method 2 {0} too long")]
    TooLong(&'static str),
}

/// A data-channel cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// AES-256-GCM.
    Aes256Gcm,
    /// AES-128-GCM.
    Aes128Gcm,
    /// CHACHA20-POLY1305.
    Chacha20Poly1305,
}

/// The server's order of preference (OpenVPN 2.6's default data-ciphers).
pub const CIPHERS: [Cipher; 3] = [
    Cipher::Aes256Gcm,
    Cipher::Aes128Gcm,
    Cipher::Chacha20Poly1305,
];

impl Cipher {
    /// The name OpenVPN uses.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Chacha20Poly1305 => "CHACHA20-POLY1305",
        }
    }

    /// The cipher of an OpenVPN name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Cipher> {
        CIPHERS
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => 32,
        }
    }
}

/// What the client said about itself in its peer info.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// IV_PROTO.
    pub proto: u32,
    /// IV_CIPHERS, in the client's order.
    pub ciphers: Vec<String>,
    /// IV_NCP (2: takes AES-GCM from the server).
    pub ncp: u32,
    /// IV_VER.
    pub version: Option<String>,
    /// IV_PLAT.
    pub platform: Option<String>,
    /// IV_GUI_VER (OpenVPN Connect, Tunnelblick, ...).
    pub gui: Option<String>,
}

impl PeerInfo {
    /// Reads `KEY=VALUE` lines; unknown keys are ignored.
    pub fn parse(text: &str) -> PeerInfo {
        let mut p = PeerInfo::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "IV_PROTO" => p.proto = v.trim().parse().unwrap_or(0),
                "IV_NCP" => p.ncp = v.trim().parse().unwrap_or(0),
                "IV_CIPHERS" => p.ciphers = v.split(':').map(str::to_string).collect(),
                "IV_VER" => p.version = Some(v.to_string()),
                "IV_PLAT" => p.platform = Some(v.to_string()),
                "IV_GUI_VER" => p.gui = Some(v.to_string()),
                _ => {}
            }
        }
        p
    }

    /// Whether an IV_PROTO bit is set.
    pub fn has(&self, bit: u32) -> bool {
        self.proto & bit != 0
    }
}

/// The data-channel cipher for a client: the server's first that the
/// client lists, AES-256-GCM for a client that takes NCP without a list,
/// else the `cipher` of its options string if it is one of ours.
pub fn choose_cipher(peer: &PeerInfo, options: &str) -> Option<Cipher> {
    if !peer.ciphers.is_empty() {
        return CIPHERS.into_iter().find(|c| {
            peer.ciphers
                .iter()
                .any(|n| n.eq_ignore_ascii_case(c.name()))
        });
    }
    if peer.ncp >= 2 {
        return Some(Cipher::Aes256Gcm);
    }
    options
        .split(',')
        .find_map(|o| o.strip_prefix("cipher "))
        .and_then(Cipher::from_name)
}

/// The client's key method 2 message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientKeys {
    /// Key source: pre-master secret (PRF only).
    pub pre_master: [u8; 48],
    /// Key source: first random (PRF only).
    pub random1: [u8; 32],
    /// Key source: second random (PRF only).
    pub random2: [u8; 32],
    /// The client's options string.
    pub options: String,
    /// The client's peer info.
    pub peer_info: PeerInfo,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeyError> {
        if self.0.len() < n {
            return Err(KeyError::Truncated);
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], KeyError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A u16-length string with its NUL; None for length 0. Every
    /// field must be there: clients since 2.3 send username, password and
    /// peer info (empty if they have none), so a message that ends early
    /// was cut across TLS records and its rest is still to come.
    fn string(&mut self, max: usize, what: &'static str) -> Result<Option<String>, KeyError> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        if len == 0 {
            return Ok(None);
        }
        if len > max {
            return Err(KeyError::TooLong(what));
        }
        let b = self.take(len)?;
        let text = b.split(|&c| c == 0).next().unwrap_or(b);
        Ok(Some(String::from_utf8_lossy(text).into_owned()))
    }
}

/// Reads the client's message and says how many bytes it took. Username
/// and password, if any, are read past and dropped: this endpoint
/// authenticates by certificate.
pub fn parse_client_keys(msg: &[u8]) -> Result<(ClientKeys, usize), KeyError> {
    let mut r = Reader(msg);
    if r.take(4)? != [0; 4] || r.take(1)?[0] & 0x0f != 2 {
        return Err(KeyError::NotKeyMethod2);
    }
    let pre_master = r.array()?;
    let random1 = r.array()?;
    let random2 = r.array()?;
    let options = r
        .string(MAX_OPTIONS, "options string")?
        .ok_or(KeyError::Truncated)?;
    let _username = r.string(usize::from(u16::MAX), "username")?;
    let _password = r.string(usize::from(u16::MAX), "password")?;
    let peer_info = r
        .string(MAX_PEER_INFO, "peer info")?
        .map(|t| PeerInfo::parse(&t))
        .unwrap_or_default();
    let keys = ClientKeys {
        pre_master,
        random1,
        random2,
        options,
        peer_info,
    };
    Ok((keys, msg.len() - r.0.len()))
}

/// The server's key method 2 message: its key sources and options
/// string, no username, password or peer info.
pub fn server_keys_message(random1: &[u8; 32], random2: &[u8; 32], options: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(80 + options.len());
    m.extend_from_slice(&[0, 0, 0, 0, 2]);
    m.extend_from_slice(random1);
    m.extend_from_slice(random2);
    let len = u16::try_from(options.len() + 1).unwrap_or(u16::MAX);
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(options.as_bytes());
    m.push(0);
    m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    m
}

/// One direction's key: the cipher key and the implicit IV (the first
/// bytes of the direction's HMAC key, crypto.c).
#[derive(Clone, PartialEq, Eq)]
pub struct DirectionKey {
    /// The cipher key (cipher-length bytes).
    pub key: Vec<u8>,
    /// The nonce's tail after the packet id.
    pub implicit_iv: [u8; 8],
}

/// The server's two data-channel keys: it encrypts with key2's second key
/// and decrypts with its first (KEY_DIRECTION_INVERSE).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerKeys {
    /// Server to client.
    pub encrypt: DirectionKey,
    /// Client to server.
    pub decrypt: DirectionKey,
}

/// Splits a 256-byte key block into the server's keys for `cipher`.
pub fn server_keys(block: &[u8; KEY_BLOCK_LEN], cipher: Cipher) -> ServerKeys {
    let direction = |i: usize| {
        let k = &block[i * 128..(i + 1) * 128];
        let mut implicit_iv = [0u8; 8];
        implicit_iv.copy_from_slice(&k[64..72]);
        DirectionKey {
            key: k[..cipher.key_len()].to_vec(),
            implicit_iv,
        }
    };
    ServerKeys {
        encrypt: direction(1),
        decrypt: direction(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_message(peer_info: &str, with_credentials: bool) -> Vec<u8> {
        let mut m = vec![0, 0, 0, 0, 2];
        m.extend_from_slice(&[1; 48]);
        m.extend_from_slice(&[2; 32]);
        m.extend_from_slice(&[3; 32]);
        let s = |m: &mut Vec<u8>, t: &str| {
            m.extend_from_slice(&(t.len() as u16 + 1).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
            m.push(0);
        };
        s(&mut m, "V4,dev-type tun,cipher AES-128-GCM,tls-client");
        if with_credentials {
            s(&mut m, "user");
            s(&mut m, "secret");
        } else {
            m.extend_from_slice(&[0, 0, 0, 0]);
        }
        s(&mut m, peer_info);
        m
    }

    #[test]
    fn a_2_6_client_message_and_its_cipher() {
        let info = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_PROTO=990\nIV_NCP=2\nIV_CIPHERS=CHACHA20-POLY1305:AES-128-GCM\nIV_TCPNL=1\n";
        let m = client_message(info, true);
        let (k, n) = parse_client_keys(&m).unwrap();
        assert_eq!(n, m.len());
        assert_eq!((k.pre_master[0], k.random1[0], k.random2[0]), (1, 2, 3));
        assert_eq!(k.peer_info.version.as_deref(), Some("2.6.14"));
        assert!(k.peer_info.has(iv_proto::TLS_KEY_EXPORT));
        assert!(k.peer_info.has(iv_proto::DATA_V2));
        assert_eq!(
            choose_cipher(&k.peer_info, &k.options),
            Some(Cipher::Aes128Gcm)
        );
        // No list: NCP 2 means AES-256-GCM; nothing: the options' cipher.
        let (k, _) = parse_client_keys(&client_message("IV_NCP=2\n", false)).unwrap();
        assert_eq!(choose_cipher(&k.peer_info, ""), Some(Cipher::Aes256Gcm));
        assert_eq!(
            choose_cipher(&PeerInfo::default(), &k.options),
            Some(Cipher::Aes128Gcm)
        );
        let bf = PeerInfo::parse("IV_CIPHERS=BF-CBC\n");
        assert_eq!(choose_cipher(&bf, ""), None);
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert_eq!(parse_client_keys(&[0; 3]), Err(KeyError::Truncated));
        assert_eq!(
            parse_client_keys(&[0, 0, 0, 0, 1]),
            Err(KeyError::NotKeyMethod2)
        );
        // Cut anywhere (a message across TLS records): wait for the rest,
        // never read it without its peer info.
        let whole = client_message("IV_VER=2.6.14\nIV_PROTO=990\n", true);
        for cut in 0..whole.len() {
            assert_eq!(
                parse_client_keys(&whole[..cut]),
                Err(KeyError::Truncated),
                "cut at {cut}"
            );
        }
        let mut m = client_message("", false);
        m.truncate(120);
        assert_eq!(parse_client_keys(&m), Err(KeyError::Truncated));
        let mut m = vec![0, 0, 0, 0, 2];
        m.extend_from_slice(&[0; 112]);
        m.extend_from_slice(&2000u16.to_be_bytes());
        m.extend_from_slice(&[b'x'; 2000]);
        assert_eq!(
            parse_client_keys(&m),
            Err(KeyError::TooLong("options string"))
        );
    }

    #[test]
    fn the_server_encrypts_with_the_second_key() {
        let block: [u8; KEY_BLOCK_LEN] = std::array::from_fn(|i| i as u8);
        let k = server_keys(&block, Cipher::Aes128Gcm);
        assert_eq!(k.decrypt.key, (0..16).collect::<Vec<u8>>());
        assert_eq!(k.decrypt.implicit_iv, [64, 65, 66, 67, 68, 69, 70, 71]);
        assert_eq!(k.encrypt.key, (128..144).collect::<Vec<u8>>());
        assert_eq!(k.encrypt.implicit_iv[0], 192);
        let m = server_keys_message(&[5; 32], &[6; 32], "V4");
        assert_eq!(m.len(), 5 + 64 + 2 + 3 + 6);
        assert_eq!(&m[69..74], &[0, 3, b'V', b'4', 0]);
    }
}
