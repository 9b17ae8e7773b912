//! The control channel against clients that misbehave after or before
//! authenticating: a close_notify followed by more records, soft resets
//! out of turn, foreign session ids, oversize packets, no shared cipher;
//! and the server's own renegotiation.

use std::sync::mpsc;
use std::time::Duration;

use super::tests::{Peer, events, exchange, start};
use super::*;
use crate::protocol::openvpn::packet::CONTROL_V1;

const INFO_2_6: &str = "IV_VER=2.6.14\nIV_PROTO=990\nIV_CIPHERS=AES-256-GCM:AES-128-GCM\n";

fn control(sid: SessionId, key_id: u8, opcode: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ControlPacket {
        opcode,
        key_id,
        session_id: sid,
        acks: Acks::default(),
        remote_session_id: None,
        message_id: Some(id),
        payload,
    }
    .encode(&mut out);
    out
}

#[test]
fn close_notify_then_more_records_ends_the_session_at_once() {
    // On a thread: before the fix this never returned.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = start(Some(INFO_2_6));
        let _ = events(&mut s.c);
        s.peer.tls.send_close_notify();
        let mut outcome = Ok(true);
        for p in s.peer.packets(s.server, s.now) {
            outcome = s.c.receive(&ControlPacket::parse(&p).unwrap(), s.now);
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_ok() {
            // Another record after the alert.
            let p = control(s.peer.sid, 0, CONTROL_V1, 50, &[0x17, 3, 3, 0, 1, 0]);
            outcome = s.c.receive(&ControlPacket::parse(&p).unwrap(), s.now);
        }
        let _ = tx.send(outcome);
    });
    let outcome = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the control channel loops after close_notify");
    assert_eq!(outcome, Err(CLOSED.to_string()));
}

#[test]
fn soft_resets_before_authentication_or_out_of_sequence_are_dropped() {
    // Handshake done, key method 2 not yet: no new key id.
    let mut s = start(None);
    let soft = control(s.peer.sid, 1, SOFT_RESET_V1, 0, b"");
    assert_eq!(
        s.c.receive(&ControlPacket::parse(&soft).unwrap(), s.now),
        Ok(true)
    );
    assert_eq!(s.c.keys.len(), 1, "a soft reset before authentication");

    let mut s = start(Some(INFO_2_6));
    let _ = events(&mut s.c);
    // Key id 3 is not the next in the server's sequence (1).
    let wrong = control(s.peer.sid, 3, SOFT_RESET_V1, 0, b"");
    s.c.receive(&ControlPacket::parse(&wrong).unwrap(), s.now)
        .unwrap();
    assert_eq!(s.c.keys.len(), 1);
    // Key id 1 starts a renegotiation; a soft reset for key id 2 while
    // it is unfinished is dropped and the active key 0 stays.
    let mut again = Peer::new(&s.config, s.peer.sid, 1);
    again.reliable.send(SOFT_RESET_V1, Vec::new());
    for p in again.packets(s.server, s.now) {
        s.c.receive(&ControlPacket::parse(&p).unwrap(), s.now)
            .unwrap();
    }
    assert_eq!(s.c.keys.len(), 2);
    let next = control(s.peer.sid, 2, SOFT_RESET_V1, 0, b"");
    s.c.receive(&ControlPacket::parse(&next).unwrap(), s.now)
        .unwrap();
    let ids: Vec<u8> = s.c.keys.iter().map(|k| k.key_id).collect();
    assert_eq!(ids, [1, 0], "the lame duck was evicted");
    assert!(events(&mut s.c).is_empty(), "no key retired");
}

#[test]
fn strangers_and_oversize_packets_do_not_count_as_the_client() {
    let mut s = start(Some(INFO_2_6));
    let stranger = control([9; 8], 0, CONTROL_V1, 7, b"x");
    assert_eq!(
        s.c.receive(&ControlPacket::parse(&stranger).unwrap(), s.now),
        Ok(false)
    );
    let big = control(s.peer.sid, 0, CONTROL_V1, 7, &[0; MAX_RECEIVED_PAYLOAD + 1]);
    assert_eq!(
        s.c.receive(&ControlPacket::parse(&big).unwrap(), s.now),
        Ok(false)
    );
    assert!(
        !s.c.keys[0].reliable.owes_acks(),
        "the oversize one was kept"
    );
}

#[test]
fn a_client_without_a_shared_cipher_gets_its_answer_then_the_refusal() {
    let mut s = start(Some("IV_VER=2.4.12\nIV_PROTO=2\nIV_CIPHERS=AES-256-CBC\n"));
    let ev = events(&mut s.c);
    let [Event::Refused { identity, reason }] = &ev[..] else {
        panic!("not refused: {} events", ev.len());
    };
    assert_eq!(identity.common_name, "alice");
    assert!(reason.contains("CBC"), "{reason}");
    // Our key method 2 message reached the client: it reads on.
    assert_eq!(&s.peer.plaintext[..5], &[0, 0, 0, 0, 2]);
    s.peer.plaintext.clear();
    s.c.send_message(&format!("AUTH_FAILED,{reason}")).unwrap();
    assert!(!s.c.all_acknowledged());
    let mut server = s.server;
    exchange(&mut s.c, &mut s.peer, &mut server, s.now);
    assert!(
        s.peer
            .plaintext
            .starts_with(b"AUTH_FAILED,no shared data cipher")
    );
    assert!(s.c.all_acknowledged(), "the client's ack was taken");
}

#[test]
fn the_server_renegotiates_after_reneg_with_the_next_key_id() {
    let mut s = start(Some(INFO_2_6));
    let _ = events(&mut s.c);
    s.c.set_reneg(Some(Duration::from_secs(10)));
    let due = s.c.next_timeout().unwrap();
    assert_eq!(due, s.now + Duration::from_secs(10));
    s.c.on_timeout(due).unwrap();
    let raw = s.c.poll_transmit(due).expect("our soft reset");
    let p = ControlPacket::parse(&raw).unwrap();
    assert_eq!(
        (p.opcode, p.key_id, p.message_id),
        (SOFT_RESET_V1, 1, Some(0))
    );
    // The client answers with its soft reset and a new handshake.
    let mut again = Peer::new(&s.config, s.peer.sid, 1);
    again.receive(&raw);
    again.reliable.send(SOFT_RESET_V1, Vec::new());
    let mut server = s.server;
    exchange(&mut s.c, &mut again, &mut server, due);
    again.send_keys();
    exchange(&mut s.c, &mut again, &mut server, due);
    let ev = events(&mut s.c);
    assert!(
        matches!(
            ev[..],
            [Event::Keys { key_id: 1, .. }, Event::Active { key_id: 1 }]
        ),
        "{} events",
        ev.len()
    );
    // Zero: no timer.
    s.c.set_reneg(Some(Duration::ZERO));
    assert!(s.c.reneg_due().is_none());
}
