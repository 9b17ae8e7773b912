//! The steps of a key after its TLS handshake: the client's identity
//! from its certificate, key method 2 (the client's message read, ours
//! sent, the data-channel keys derived) and the control messages after.

use std::io::Write;

use super::records::flush_tls;
use super::{Control, Event, Phase, Transport};
use crate::protocol::openvpn::keys::{self, KEY_BLOCK_LEN, KeyError};
use crate::protocol::openvpn::prf;

/// The server's options string, as a 2.6 server's OCC string reads for
/// the transport (the client compares it with its own and warns).
fn options(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => {
            "V4,dev-type tun,link-mtu 1521,tun-mtu 1500,proto UDPv4,keysize 256,key-method 2,tls-server"
        }
        Transport::Tcp => {
            "V4,dev-type tun,link-mtu 1523,tun-mtu 1500,proto TCPv4_SERVER,keysize 256,key-method 2,tls-server"
        }
    }
}

/// What the client is told when no data cipher is shared.
pub const NO_SHARED_CIPHER: &str = "no shared data cipher: this endpoint takes AES-256-GCM, \
AES-128-GCM and CHACHA20-POLY1305 (CBC ciphers are not supported); add one to data-ciphers";

impl Control {
    pub(super) fn authenticated(&mut self, i: usize) -> Result<(), String> {
        let key = &mut self.keys[i];
        let cert = key
            .tls
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        let identity = cvpn_pki::client_identity(cert).map_err(|e| e.to_string())?;
        if let Some(first) = &self.identity
            && first.common_name != identity.common_name
        {
            return Err("the certificate changed in a renegotiation".into());
        }
        key.phase = Phase::AwaitKeys;
        self.identity.get_or_insert(identity);
        Ok(())
    }

    /// Reads the client's key method 2 message, answers with ours and
    /// derives the key id's data-channel keys. A first key without a
    /// cipher in common still gets our answer, so that the client reads
    /// the AUTH_FAILED that follows.
    pub(super) fn key_exchange(&mut self, i: usize) -> Result<(), String> {
        let (client, consumed) = match keys::parse_client_keys(&self.keys[i].plaintext) {
            Ok(c) => c,
            Err(KeyError::Truncated) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        self.keys[i].plaintext.drain(..consumed);
        let first = self.cipher.is_none();
        let cipher = match self.cipher {
            Some(c) => Some(c),
            None => keys::choose_cipher(&client.peer_info, &client.options),
        };
        if first {
            self.tls_ekm = client.peer_info.has(keys::iv_proto::TLS_KEY_EXPORT);
        }
        let (mut r1, mut r2) = ([0u8; 32], [0u8; 32]);
        getrandom::fill(&mut r1).map_err(|e| e.to_string())?;
        getrandom::fill(&mut r2).map_err(|e| e.to_string())?;
        let msg = keys::server_keys_message(&r1, &r2, options(self.transport));
        let key = &mut self.keys[i];
        key.tls
            .writer()
            .write_all(&msg)
            .map_err(|e| e.to_string())?;
        flush_tls(key)?;
        key.phase = Phase::Active { announced: false };
        let identity = self.identity.clone().ok_or("no identity")?;
        let Some(cipher) = cipher else {
            self.refused = true;
            self.events.push_back(Event::Refused {
                identity,
                reason: NO_SHARED_CIPHER.into(),
            });
            return Ok(());
        };
        let block = if self.tls_ekm {
            key.tls
                .export_keying_material([0u8; KEY_BLOCK_LEN], keys::EKM_LABEL, None)
                .map_err(|e| format!("TLS exporter: {e}"))?
        } else {
            prf::key_block(&prf::Sources {
                pre_master: &client.pre_master,
                client_random1: &client.random1,
                client_random2: &client.random2,
                server_random1: &r1,
                server_random2: &r2,
                client_sid: &self.peer_sid,
                server_sid: &self.own_sid,
            })
        };
        let key_id = key.key_id;
        if first {
            self.cipher = Some(cipher);
            self.events.push_back(Event::Authenticated {
                identity,
                peer_info: client.peer_info,
                cipher,
                tls_ekm: self.tls_ekm,
            });
        }
        self.events.push_back(Event::Keys {
            key_id,
            cipher,
            keys: keys::server_keys(&block, cipher),
        });
        Ok(())
    }

    /// Control messages: NUL-terminated strings.
    pub(super) fn messages(&mut self, i: usize) {
        let key = &mut self.keys[i];
        while let Some(end) = key.plaintext.iter().position(|&b| b == 0) {
            let msg: Vec<u8> = key.plaintext.drain(..=end).collect();
            let text = String::from_utf8_lossy(&msg[..end]);
            match text.trim_end() {
                "PUSH_REQUEST" => self.events.push_back(Event::PushRequest),
                "EXIT" => self.events.push_back(Event::Exit),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_string_names_the_transport() {
        assert!(options(Transport::Udp).contains(",proto UDPv4,"));
        assert!(options(Transport::Tcp).contains(",proto TCPv4_SERVER,"));
        assert!(!options(Transport::Tcp).contains("UDP"));
    }
}
