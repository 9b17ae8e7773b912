//! The TLS records of one key id: from the client's control packets into
//! rustls, and from rustls into control packets.

use std::io::Read;

use super::{KeyState, MAX_CONTROL_PAYLOAD, MAX_PLAINTEXT, tls_failure};
use crate::protocol::openvpn::packet::CONTROL_V1;

/// Why a session ends when the client closed its TLS session.
pub const CLOSED: &str = "client closed the control channel (TLS close_notify)";

/// Hands TLS records from the client to rustls. rustls takes nothing
/// after the client's close_notify: that ends the session (the bytes
/// would otherwise never be consumed).
pub(super) fn feed_tls(key: &mut KeyState, mut records: &[u8]) -> Result<(), String> {
    while !records.is_empty() {
        if key.tls.read_tls(&mut records).map_err(tls_failure)? == 0 {
            return Err(CLOSED.into());
        }
        if let Err(e) = key.tls.process_new_packets() {
            // The alert rustls queued goes out before the session ends.
            let _ = flush_tls(key);
            return Err(tls_failure(e));
        }
    }
    Ok(())
}

/// Queues what rustls has to send, cut into control-packet payloads.
pub(super) fn flush_tls(key: &mut KeyState) -> Result<(), String> {
    let mut out = Vec::new();
    while key.tls.wants_write() {
        key.tls.write_tls(&mut out).map_err(|e| e.to_string())?;
    }
    for chunk in out.chunks(MAX_CONTROL_PAYLOAD) {
        if !key.reliable.send(CONTROL_V1, chunk.to_vec()) {
            return Err("the client acknowledges nothing: control channel stalled".into());
        }
    }
    Ok(())
}

/// Takes the TLS plaintext rustls has, bounded; the end of the client's
/// TLS stream (close_notify) ends the session.
pub(super) fn read_plaintext(key: &mut KeyState) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    loop {
        match key.tls.reader().read(&mut buf) {
            Ok(0) => return Err(CLOSED.into()),
            Ok(n) => {
                if key.plaintext.len() + n > MAX_PLAINTEXT {
                    return Err("control channel message too long".into());
                }
                key.plaintext.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}
