//! Draining: the gateway refuses new sessions (temporarily: the clients
//! go to another gateway), moves its clients away (each told to
//! reconnect elsewhere at once), and is done when it holds no session or
//! its timeout passed; `serve` then exits.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::{Endpoint, MOVED};

/// How often a draining gateway looks whether it is empty.
const POLL: Duration = Duration::from_millis(50);

/// A gateway's drain: when it must be done at the latest.
#[derive(Default)]
pub struct Drain {
    deadline: std::sync::Mutex<Option<Instant>>,
    started: tokio::sync::Notify,
    draining: std::sync::atomic::AtomicBool,
}

impl Endpoint {
    /// Starts draining (a second call only moves the deadline earlier):
    /// no session is admitted from now on and every session is told to
    /// move. Returns how many were told.
    pub async fn drain(&self, timeout: Duration) -> usize {
        // Under the admission lock: no admission is half done.
        let _admission = self.admission.all().await;
        let deadline = Instant::now() + timeout;
        let mut slot = self
            .drain
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *slot = Some(slot.map_or(deadline, |d| d.min(deadline)));
        drop(slot);
        self.drain.draining.store(true, Ordering::Relaxed);
        self.drain.started.notify_waiters();
        let sessions = self.sessions.all();
        info!(
            sessions = sessions.len(),
            timeout_secs = timeout.as_secs(),
            "draining"
        );
        for s in &sessions {
            s.terminate(MOVED);
        }
        sessions.len()
    }

    /// Whether the gateway drains (and admits no one).
    pub fn draining(&self) -> bool {
        self.drain.draining.load(Ordering::Relaxed)
    }

    /// Resolves once a drain is done: no session left, or its deadline
    /// passed (the sessions left are then ended as the gateway stops).
    pub async fn drained(&self) {
        loop {
            let notified = self.drain.started.notified();
            let deadline = *self
                .drain
                .deadline
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(deadline) = deadline {
                while !self.sessions.is_empty() && Instant::now() < deadline {
                    tokio::time::sleep(POLL).await;
                }
                info!(left = self.sessions.len(), "drained");
                return;
            }
            notified.await;
        }
    }
}
