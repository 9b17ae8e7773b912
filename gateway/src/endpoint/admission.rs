//! Admission: the per-identity and endpoint-wide session limits and the
//! sticky address, checked and assigned as one step; the end of a session;
//! and the lease table kept in `state_dir` across restarts.

use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cvpn_proto::text::untrusted;
use tracing::{info, warn};

use super::{Claim, Endpoint, SharedLeases, peers};

/// Claims tried before an admission gives up (each loses only to another
/// node's admission of the same moment).
const CLAIM_ATTEMPTS: usize = 8;
use super::lease::{self, Leases};
use super::pool::Pool;
use super::session::Session;

/// Shards of the admission lock: admissions of identities in different
/// shards run side by side (each may wait for a cluster's store), an
/// identity's own one at a time.
const SHARDS: usize = 64;

/// The admission locks, and the admissions between their checks and
/// their sessions' registration (counted against `max_connections`).
pub struct AdmissionLocks {
    shards: Vec<tokio::sync::Mutex<()>>,
    in_flight: AtomicUsize,
}

impl Default for AdmissionLocks {
    fn default() -> AdmissionLocks {
        AdmissionLocks {
            shards: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl AdmissionLocks {
    /// The lock of `identity`'s shard.
    fn of(&self, identity: &str) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        identity.hash(&mut h);
        &self.shards[h.finish() as usize % SHARDS]
    }

    /// Every shard's lock: no admission is under way while they are held.
    pub async fn all(&self) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut held = Vec::with_capacity(SHARDS);
        for s in &self.shards {
            held.push(s.lock().await);
        }
        held
    }
}

/// An admission counted in `in_flight` until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Proof that a client was admitted: its address, and its identity's
/// admission lock held until its session is registered.
pub struct Admitted<'a> {
    /// The address assigned to the client.
    pub address: Ipv4Addr,
    _guard: tokio::sync::MutexGuard<'a, ()>,
    _in_flight: InFlight<'a>,
}

/// Where in the pool a claim for `identity` looks at its `attempt`.
fn spread(identity: &str, attempt: usize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (identity, attempt).hash(&mut h);
    h.finish()
}

/// Why a client is refused while the cluster's store does not answer
/// (never admitted then: no second holder of an address or identity).
fn unavailable(e: String) -> String {
    warn!(error = %e, "cluster store unavailable: refusing a client for now");
    "cluster store unavailable (try again shortly)".to_string()
}

impl Endpoint {
    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Addresses free in the pool.
    pub fn free_addresses(&self) -> u32 {
        self.leases().free()
    }

    /// Admits `common_name`: ends its oldest sessions beyond
    /// `max_sessions_per_identity - 1` (each told why), checks
    /// `max_connections`, and assigns its sticky address. Err: why the
    /// client is refused. The caller registers the session (`start`)
    /// before letting go of the admission.
    pub async fn admit(&self, common_name: &str) -> Result<Admitted<'_>, String> {
        let guard = self.admission.of(common_name).lock().await;
        if self.draining() {
            return Err(super::DRAINING.into());
        }
        let elsewhere = match self.other_nodes() {
            Some(o) => o.sessions_of(common_name).await.map_err(unavailable)?,
            None => Vec::new(),
        };
        let same: Vec<(i128, Arc<Session>)> = self
            .sessions
            .all()
            .into_iter()
            .filter(|s| s.common_name == common_name)
            .map(|s| (s.started.unix_timestamp_nanos(), s))
            .collect();
        let keep = self.config().max_sessions_per_identity as usize - 1;
        let (replaced, replaced_elsewhere) = peers::replaced(&same, &elsewhere, keep);
        const REPLACED: &str = "replaced by a new session of the same identity";
        for s in &replaced {
            info!(connection_id = %s.connection_id, common_name = %untrusted(common_name), "{REPLACED}");
            s.terminate(REPLACED);
        }
        if let Some(o) = self.other_nodes()
            && !replaced_elsewhere.is_empty()
        {
            for r in &replaced_elsewhere {
                info!(connection_id = %untrusted(&r.connection_id), node = %untrusted(&r.node),
                      common_name = %untrusted(common_name), "{REPLACED} (on another node)");
            }
            // The other node ends it within a watch's delay; its address
            // is this identity's anyway.
            if let Err(e) = o.terminate(&replaced_elsewhere, REPLACED).await {
                warn!(error = %e, "cannot ask another node to end a replaced session");
            }
        }
        // Their addresses go back to the pool as they end (at once: the
        // session tasks only close their outboxes first).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            // Under the lease lock, as `end` unregisters and releases:
            // gone from the registry means back in the pool.
            let leases = self.leases();
            let gone = !replaced.iter().any(|s| {
                self.sessions
                    .get(s.address)
                    .is_some_and(|r| Arc::ptr_eq(&r, s))
            });
            drop(leases);
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let max = self.config().max_connections;
        let in_flight = &self.admission.in_flight;
        let others = in_flight.fetch_add(1, Ordering::Relaxed);
        let reserved = InFlight(in_flight);
        if self.sessions.len() + others >= max as usize {
            return Err(format!("the endpoint is at max_connections ({max})"));
        }
        let address = match self.shared_leases.get() {
            Some(shared) => self.assign_shared(shared.as_ref(), common_name).await?,
            None => self
                .leases()
                .assign(common_name)
                .ok_or_else(|| "no free address in client_cidr".to_string())?,
        };
        Ok(Admitted {
            address,
            _guard: guard,
            _in_flight: reserved,
        })
    }

    /// An address for `common_name` that the cluster's shared leases
    /// agree to: its leased one, or a free one claimed for it. A store
    /// that does not answer admits no one (never a second holder).
    async fn assign_shared(
        &self,
        shared: &dyn SharedLeases,
        common_name: &str,
    ) -> Result<Ipv4Addr, String> {
        let mut leased = shared.leased(common_name).await.map_err(unavailable)?;
        for attempt in 0..CLAIM_ATTEMPTS {
            let candidate = match leased {
                Some(a) => {
                    // The store's lease is the identity's for good (its
                    // address key was created with it): nothing to claim.
                    return self
                        .leases()
                        .assign_exact(common_name, a)
                        .ok_or_else(|| format!("its address {a} is still in use on this gateway"));
                }
                None => {
                    // Each attempt looks elsewhere, as each node does for
                    // each identity: racing claims rarely meet.
                    let mut leases = self.leases();
                    leases.look_from(spread(common_name, attempt));
                    leases
                        .assign(common_name)
                        .ok_or_else(|| "no free address in client_cidr".to_string())?
                }
            };
            let answer = shared.claim(common_name, candidate).await;
            let claim = match answer {
                Ok(c) => c,
                Err(e) => {
                    self.leases().release(candidate);
                    return Err(unavailable(e));
                }
            };
            match claim {
                Claim::Claimed => return Ok(candidate),
                Claim::YoursIs(a) => {
                    self.leases().release(candidate);
                    leased = Some(a);
                }
                Claim::HeldBy(holder) => {
                    let mut leases = self.leases();
                    leases.release(candidate);
                    if !holder.is_empty() {
                        leases.note_holder(candidate, &holder);
                    }
                }
            }
        }
        Err("no address could be claimed in the cluster (try again shortly)".into())
    }

    /// Registers an admitted client's session and logs its start; the
    /// admission ends here.
    pub fn start(&self, session: Arc<Session>, admitted: Admitted<'_>) {
        session.routes_generation.store(
            self.routes_generation(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.sessions.insert(session.clone());
        self.observe(&session, true);
        drop(admitted);
        let waited = time::OffsetDateTime::now_utc() - session.started;
        self.tally.session_started(waited.as_seconds_f64());
        self.log(&session.record(super::connlog::Event::Connected));
    }

    /// Gives back an address `admit` assigned to a client whose session
    /// never started.
    pub fn abandon(&self, admitted: Admitted<'_>) {
        self.leases().release(admitted.address);
    }

    /// Unregisters a session and returns its address to the pool (its
    /// lease stays), as one step.
    pub fn end(&self, session: &Session) {
        let mut leases = self.leases();
        self.sessions.remove(session.address);
        leases.release(session.address);
        drop(leases);
        self.observe(session, false);
        self.tally
            .session_ended(session.protocol, &session.traffic());
    }

    /// Saves the lease table if it changed since the last save.
    pub fn save_leases(&self) {
        let snapshot = self.leases().take_snapshot();
        if let Some(text) = snapshot
            && let Err(e) = lease::save(&self.config().state_dir, &text)
        {
            warn!(error = %e, "cannot save the lease table");
        }
    }
}

/// The lease table kept in `dir`; an unreadable one is named and set
/// aside (clients then get new addresses), never fatal.
pub fn restore_leases(dir: &std::path::Path, pool: Pool) -> Leases {
    let mut leases = Leases::new(pool);
    match lease::load(dir) {
        Ok(None) => {}
        Ok(Some(text)) => match leases.restore(&text) {
            Ok(n) => info!(leases = n, state_dir = %dir.display(), "lease table restored"),
            Err(why) => warn!(
                file = %dir.join(lease::LEASE_FILE).display(), %why,
                "not a lease table: clients get new addresses"
            ),
        },
        Err(e) => warn!(error = %e, "cannot read the lease table: clients get new addresses"),
    }
    leases
}
