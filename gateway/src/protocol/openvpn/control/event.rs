//! What the control channel reports to its shell.

use cvpn_pki::ClientIdentity;

use crate::protocol::openvpn::keys::{Cipher, PeerInfo, ServerKeys};

/// What the shell must act on.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// The first key's TLS handshake and key exchange finished: the shell
    /// admits the client.
    Authenticated {
        /// From the client's certificate.
        identity: ClientIdentity,
        /// What the client said about itself.
        peer_info: PeerInfo,
        /// The negotiated data-channel cipher.
        cipher: Cipher,
        /// Data keys come from the TLS exporter (else the PRF).
        tls_ekm: bool,
    },
    /// The client authenticated but cannot be served (no data cipher in
    /// common): the shell tells it why (AUTH_FAILED) and ends.
    Refused {
        /// From the client's certificate.
        identity: ClientIdentity,
        /// What the client is told.
        reason: String,
    },
    /// Data-channel keys for a key id: open with them at once, seal with
    /// them after `Active`.
    Keys {
        /// The key id.
        key_id: u8,
        /// The cipher.
        cipher: Cipher,
        /// Both directions.
        keys: ServerKeys,
    },
    /// The client has the key id's keys: seal with them from now on.
    Active {
        /// The key id.
        key_id: u8,
    },
    /// A replaced key id's transition window is over: drop its keys.
    Retired {
        /// The key id.
        key_id: u8,
    },
    /// The client asked for its configuration.
    PushRequest,
    /// The client announced its exit.
    Exit,
}
