//! The control channel's reliability layer (reliable.c): every control
//! message carries a message id; the receiver acknowledges each one and
//! hands them on in order; the sender keeps a bounded window of messages
//! not yet acknowledged and, over UDP, sends them again with a doubling
//! timeout. One per key id: a renegotiation starts again at id 0.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Messages sent and not yet acknowledged, at most (ssl_common.h's
/// TLS_RELIABLE_N_SEND_BUFFERS).
pub const SEND_WINDOW: usize = 6;
/// How far ahead of the next expected id a message is kept (ssl_common.h's
/// TLS_RELIABLE_N_REC_BUFFERS).
pub const RECEIVE_WINDOW: u32 = 12;
/// Messages queued behind the send window, at most: past it the session
/// is failing (the peer acknowledges nothing).
pub const MAX_QUEUED: usize = 64;
/// Acknowledgements owed, at most (a peer resending old ids cannot grow
/// it).
const MAX_PENDING_ACKS: usize = 64;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(8);

/// A message waiting for its acknowledgement.
struct InFlight {
    id: u32,
    opcode: u8,
    payload: Vec<u8>,
    /// When it goes (again); None: due now.
    due: Option<Instant>,
    backoff: Duration,
}

/// What to send: a message (new or again).
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// Its message id.
    pub id: u32,
    /// Its opcode.
    pub opcode: u8,
    /// Its payload.
    pub payload: &'a [u8],
}

/// What became of a received message.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// New: it will be handed on in order.
    New,
    /// Seen before (acknowledged again).
    Duplicate,
    /// Too far ahead: dropped, not acknowledged.
    OutOfWindow,
}

/// The reliability state of one key id.
pub struct Reliable {
    retransmit: bool,
    next_id: u32,
    in_flight: VecDeque<InFlight>,
    queued: VecDeque<(u8, Vec<u8>)>,
    next_expected: u32,
    early: BTreeMap<u32, (u8, Vec<u8>)>,
    acks_owed: VecDeque<u32>,
}

impl Reliable {
    /// A fresh state; `retransmit` is false over TCP, which delivers
    /// every message itself.
    pub fn new(retransmit: bool) -> Reliable {
        Reliable {
            retransmit,
            next_id: 0,
            in_flight: VecDeque::new(),
            queued: VecDeque::new(),
            next_expected: 0,
            early: BTreeMap::new(),
            acks_owed: VecDeque::new(),
        }
    }

    /// A state past a three-way handshake the server answered without
    /// state: the client's message 0 was received and ours (id 0) is
    /// acknowledged.
    pub fn after_stateless_reset(retransmit: bool) -> Reliable {
        let mut r = Reliable::new(retransmit);
        r.next_id = 1;
        r.next_expected = 1;
        r
    }

    /// Queues a message; false if too much is queued already.
    pub fn send(&mut self, opcode: u8, payload: Vec<u8>) -> bool {
        if self.queued.len() >= MAX_QUEUED {
            return false;
        }
        self.queued.push_back((opcode, payload));
        self.fill_window();
        true
    }

    fn fill_window(&mut self) {
        while self.in_flight.len() < SEND_WINDOW {
            let Some((opcode, payload)) = self.queued.pop_front() else {
                return;
            };
            self.in_flight.push_back(InFlight {
                id: self.next_id,
                opcode,
                payload,
                due: None,
                backoff: FIRST_RETRY,
            });
            self.next_id = self.next_id.wrapping_add(1);
        }
    }

    /// The peer acknowledged `ids`.
    pub fn acknowledged(&mut self, ids: &[u32]) {
        self.in_flight.retain(|m| !ids.contains(&m.id));
        self.fill_window();
    }

    /// A message from the peer. New and duplicate messages are owed an
    /// acknowledgement.
    pub fn receive(&mut self, id: u32, opcode: u8, payload: &[u8]) -> Received {
        let ahead = id.wrapping_sub(self.next_expected);
        let outcome = if ahead >= RECEIVE_WINDOW {
            // Behind (a copy of one handed on already) or far ahead.
            if ahead > u32::MAX / 2 {
                Received::Duplicate
            } else {
                return Received::OutOfWindow;
            }
        } else {
            match self.early.entry(id) {
                std::collections::btree_map::Entry::Occupied(_) => Received::Duplicate,
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert((opcode, payload.to_vec()));
                    Received::New
                }
            }
        };
        if !self.acks_owed.contains(&id) {
            if self.acks_owed.len() == MAX_PENDING_ACKS {
                self.acks_owed.pop_front();
            }
            self.acks_owed.push_back(id);
        }
        outcome
    }

    /// The next message in order, if it arrived.
    pub fn next_in_order(&mut self) -> Option<(u8, Vec<u8>)> {
        let m = self.early.remove(&self.next_expected)?;
        self.next_expected = self.next_expected.wrapping_add(1);
        Some(m)
    }

    /// Takes up to `max` acknowledgements owed.
    pub fn take_acks(&mut self, max: usize) -> Vec<u32> {
        let n = max.min(self.acks_owed.len());
        self.acks_owed.drain(..n).collect()
    }

    /// Whether acknowledgements are owed.
    pub fn owes_acks(&self) -> bool {
        !self.acks_owed.is_empty()
    }

    /// The next message due at `now` (new, or again after its timeout),
    /// marked as sent.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<'_>> {
        let retransmit = self.retransmit;
        let m = self
            .in_flight
            .iter_mut()
            .find(|m| m.due.is_none_or(|d| retransmit && d <= now))?;
        m.due = Some(now + m.backoff);
        m.backoff = (m.backoff * 2).min(MAX_RETRY);
        Some(Transmit {
            id: m.id,
            opcode: m.opcode,
            payload: &m.payload,
        })
    }

    /// When a message is due again, if one will be.
    pub fn next_timeout(&self) -> Option<Instant> {
        if !self.retransmit {
            return None;
        }
        self.in_flight.iter().filter_map(|m| m.due).min()
    }

    /// Nothing sent is waiting for its acknowledgement, nothing queued.
    pub fn all_acknowledged(&self) -> bool {
        self.in_flight.is_empty() && self.queued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_go_in_a_window_and_again_until_acknowledged() {
        let t0 = Instant::now();
        let mut r = Reliable::new(true);
        for i in 0..8u8 {
            assert!(r.send(4, vec![i]));
        }
        let mut sent = Vec::new();
        while let Some(t) = r.poll_transmit(t0) {
            sent.push(t.id);
        }
        assert_eq!(sent, [0, 1, 2, 3, 4, 5]);
        assert_eq!(r.next_timeout(), Some(t0 + FIRST_RETRY));
        r.acknowledged(&[0, 2]);
        let again: Vec<u32> = std::iter::from_fn(|| r.poll_transmit(t0).map(|t| t.id)).collect();
        assert_eq!(again, [6, 7]);
        // After the timeout, the unacknowledged ones go again, then wait
        // twice as long.
        let t1 = t0 + FIRST_RETRY;
        let again: Vec<u32> = std::iter::from_fn(|| r.poll_transmit(t1).map(|t| t.id)).collect();
        assert_eq!(again, [1, 3, 4, 5, 6, 7]);
        assert_eq!(r.poll_transmit(t1 + FIRST_RETRY), None);
        assert!(r.poll_transmit(t1 + 2 * FIRST_RETRY).is_some());
        r.acknowledged(&[1, 3, 4, 5, 6, 7]);
        assert!(r.all_acknowledged());

        // Over TCP nothing is sent twice.
        let mut tcp = Reliable::new(false);
        tcp.send(4, vec![1]);
        assert!(tcp.poll_transmit(t0).is_some());
        assert_eq!(tcp.poll_transmit(t0 + MAX_RETRY * 10), None);
        assert_eq!(tcp.next_timeout(), None);
    }

    #[test]
    fn received_messages_are_handed_on_in_order_once() {
        let mut r = Reliable::new(true);
        assert_eq!(r.receive(1, 4, b"b"), Received::New);
        assert_eq!(r.next_in_order(), None);
        assert_eq!(r.receive(0, 4, b"a"), Received::New);
        assert_eq!(r.receive(1, 4, b"b"), Received::Duplicate);
        assert_eq!(r.next_in_order(), Some((4, b"a".to_vec())));
        assert_eq!(r.next_in_order(), Some((4, b"b".to_vec())));
        assert_eq!(r.next_in_order(), None);
        // A copy of a message handed on already is acknowledged again.
        assert_eq!(r.receive(0, 4, b"a"), Received::Duplicate);
        assert_eq!(
            r.receive(2 + RECEIVE_WINDOW, 4, b"x"),
            Received::OutOfWindow
        );
        assert_eq!(r.take_acks(8), [1, 0]);
        assert!(!r.owes_acks());
        // Acknowledgements owed are bounded.
        for id in 0..1000 {
            r.receive(id, 4, b"");
        }
        assert!(r.take_acks(usize::MAX).len() <= MAX_PENDING_ACKS);
    }

    #[test]
    fn a_stateless_start_continues_at_id_1() {
        let mut r = Reliable::after_stateless_reset(true);
        r.send(4, vec![]);
        assert_eq!(r.poll_transmit(Instant::now()).unwrap().id, 1);
        assert_eq!(r.receive(1, 4, b"hello"), Received::New);
        assert_eq!(r.next_in_order(), Some((4, b"hello".to_vec())));
    }
}
