//! What each packet thread did: the thread and queue layout that
//! `connections --json` and the metrics show. Each thread counts into a
//! row of its own, on a cache line of its own, so that counting never
//! makes two threads wait for each other's line.

use std::sync::atomic::{AtomicU64, Ordering};

/// One packet thread's counters (thread i reads UDP socket i and tun
/// queue i).
#[derive(Default)]
#[repr(align(64))]
pub struct ThreadCounters {
    /// Datagrams received from clients.
    pub datagrams: AtomicU64,
    /// Batches of datagrams (one receive call each).
    pub batches: AtomicU64,
    /// Packets read from the thread's tun queue (toward clients).
    pub tun_reads: AtomicU64,
    /// Writes to the thread's tun queue (toward target networks).
    pub tun_writes: AtomicU64,
    /// Packets from clients that went out inside another's write,
    /// coalesced into one offload frame.
    pub coalesced: AtomicU64,
}

impl ThreadCounters {
    /// Adds `n` to `counter` (only the owning thread writes its row).
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The row as (name, value) pairs, in a fixed order.
    pub fn values(&self) -> [(&'static str, u64); 5] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("datagrams", load(&self.datagrams)),
            ("batches", load(&self.batches)),
            ("tun_reads", load(&self.tun_reads)),
            ("tun_writes", load(&self.tun_writes)),
            ("coalesced", load(&self.coalesced)),
        ]
    }
}

/// The packet threads of a gateway with `transport_protocol = "udp"`.
pub struct DataThreads {
    rows: Box<[ThreadCounters]>,
}

impl DataThreads {
    /// Rows for `n` threads.
    pub fn new(n: usize) -> DataThreads {
        DataThreads {
            rows: (0..n).map(|_| ThreadCounters::default()).collect(),
        }
    }

    /// Thread `i`'s row.
    pub fn row(&self, i: usize) -> &ThreadCounters {
        &self.rows[i.min(self.rows.len().saturating_sub(1))]
    }

    /// Every row, thread 0 first.
    pub fn rows(&self) -> &[ThreadCounters] {
        &self.rows
    }
}

/// The number of packet threads for `configured` (0: one per core).
pub fn thread_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_apart_and_zero_means_every_core() {
        assert_eq!(std::mem::align_of::<ThreadCounters>(), 64);
        let t = DataThreads::new(3);
        ThreadCounters::add(&t.row(1).datagrams, 5);
        assert_eq!(t.rows()[1].values()[0], ("datagrams", 5));
        assert_eq!(t.rows()[0].values()[0].1, 0);
        assert_eq!(thread_count(4), 4);
        assert!(thread_count(0) >= 1);
    }
}
