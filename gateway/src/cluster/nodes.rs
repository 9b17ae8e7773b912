//! The node registry: each gateway keeps a record of itself under
//! `PREFIX nodes/NODE`, bound to an etcd lease it keeps alive (TTL 10 s),
//! so a dead gateway vanishes from the cluster within the TTL and a
//! stopping one at once (it revokes its lease).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::store::{self, StoreError};
use crate::config::Cluster;

/// The lease of a node's keys: it is gone this long after it stops
/// renewing.
pub const LEASE_TTL: i64 = 10;
/// Changes written in one transaction at most (etcd takes 128 operations
/// per transaction by default).
const MAX_BATCH: usize = 128;
/// How often the lease is renewed and the record rewritten.
pub const HEARTBEAT: Duration = Duration::from_secs(3);

/// What a node says of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `[cluster] node`.
    pub node: String,
    /// `[cluster] advertise`: how clients reach it.
    pub advertise: String,
    /// The gateway's version.
    pub version: String,
    /// The digest of its whole policy.
    pub policy_digest: String,
    /// Each policy key's digest (see `policy::key_digests`).
    pub policy: BTreeMap<String, String>,
    /// Its live sessions.
    pub sessions: u64,
    /// When it last wrote this (Unix seconds).
    pub heartbeat: i64,
    /// It drains: profiles leave it out, its clients move away.
    #[serde(default)]
    pub draining: bool,
}

/// Entries to publish under the node's lease as they change: a key
/// (under the prefix) and its value, or None to delete it.
pub type Changes = tokio::sync::mpsc::UnboundedReceiver<(String, Option<Vec<u8>>)>;

/// What a node keeps in etcd: its record, its entries (all of them, to
/// publish at each registration) and their changes in between.
pub struct Node<R, E> {
    /// The node's record now.
    pub record: R,
    /// Every entry now: (key under the prefix, value).
    pub entries: E,
    /// Entries changed since.
    pub changes: Changes,
}

fn node_key(cluster: &Cluster, node: &str) -> String {
    format!("{}nodes/{node}", cluster.prefix)
}

/// Every live node's record, sorted by name; records that do not parse
/// are skipped (another version's, or damage).
pub async fn list(cluster: &Cluster) -> Result<Vec<NodeRecord>, StoreError> {
    let mut client = store::connect(cluster).await?;
    let prefix = format!("{}nodes/", cluster.prefix);
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| store::etcd_error(cluster, e))?;
    let mut nodes: Vec<NodeRecord> = resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

/// Keeps this node's record in etcd for as long as the process runs:
/// `record` is asked for the current record at each heartbeat; `report`
/// is told after each whether the store answered, and if so how many
/// nodes are live and how long the heartbeat's requests took. Reconnects (and re-registers under a new lease) by itself after
/// a store outage.
pub async fn keep_registered(
    cluster: Cluster,
    node: Node<impl Fn() -> NodeRecord, impl Fn() -> Vec<(String, Vec<u8>)>>,
    report: impl Fn(bool, Option<(u64, Duration)>),
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Node {
        record,
        entries,
        mut changes,
    } = node;
    let current = Mutex::new(None);
    let mut was_up = true;
    loop {
        let outcome = tokio::select! {
            r = register_once(&cluster, (&record, &entries, &mut changes), &report, &current) => r,
            _ = stop.changed() => break,
        };
        report(false, None);
        if let Err(e) = outcome
            && was_up
        {
            warn!(error = %e, "cluster store unavailable; retrying");
        }
        was_up = false;
        // All entries are published anew at the next registration.
        while changes.try_recv().is_ok() {}
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => break,
        }
    }
    // Stopping: the node's keys go at once rather than at the TTL.
    let held = current.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((mut client, lease)) = held {
        let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
    }
}

/// One registration: a lease (kept in `current` for the revocation at
/// stop), then the record rewritten and the lease renewed every
/// heartbeat until the store fails.
async fn register_once(
    cluster: &Cluster,
    (record, entries, changes): (
        &impl Fn() -> NodeRecord,
        &impl Fn() -> Vec<(String, Vec<u8>)>,
        &mut Changes,
    ),
    report: &impl Fn(bool, Option<(u64, Duration)>),
    current: &Mutex<Option<(etcd_client::Client, i64)>>,
) -> Result<(), StoreError> {
    let e = |source| store::etcd_error(cluster, source);
    let mut client = store::connect(cluster).await?;
    let lease = client.lease_grant(LEASE_TTL, None).await.map_err(e)?.id();
    *current.lock().unwrap_or_else(|p| p.into_inner()) = Some((client.clone(), lease));
    let (mut keeper, mut acks) = client.lease_keep_alive(lease).await.map_err(e)?;
    let key = node_key(cluster, &cluster.node);
    info!(node = %cluster.node, lease, "registered in the cluster");
    let with_lease = || Some(PutOptions::new().with_lease(lease));
    for (key, value) in entries() {
        let key = format!("{}{key}", cluster.prefix);
        client.put(key, value, with_lease()).await.map_err(e)?;
    }
    let mut beat = tokio::time::interval(HEARTBEAT);
    // The first tick is at once.
    beat.tick().await;
    loop {
        let sent = tokio::time::Instant::now();
        let value = serde_json::to_vec(&record()).unwrap_or_default();
        client
            .put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(e)?;
        keeper.keep_alive().await.map_err(e)?;
        match tokio::time::timeout(store::REQUEST_TIMEOUT, acks.message()).await {
            Ok(Ok(Some(ack))) if ack.ttl() > 0 => {}
            Ok(Err(err)) => return Err(e(err)),
            // Expired (TTL 0), the stream ended, or no answer in time.
            _ => {
                return Err(e(etcd_client::Error::LeaseKeepAliveError(
                    "the lease was not renewed".into(),
                )));
            }
        }
        let live = client
            .get(
                format!("{}nodes/", cluster.prefix),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(e)?
            .count();
        report(
            true,
            Some((u64::try_from(live).unwrap_or(0), sent.elapsed())),
        );
        // Entries change as they come, between heartbeats.
        loop {
            tokio::select! {
                _ = beat.tick() => break,
                change = changes.recv() => {
                    let Some(first) = change else { break };
                    // What else is queued goes in the same transaction:
                    // one round trip (and one commit) for a burst. A key
                    // appears once in a transaction: its last change.
                    let mut batch: Vec<(String, Option<Vec<u8>>)> = Vec::new();
                    let mut next = Some(first);
                    while let Some((key, value)) = next {
                        match batch.iter_mut().find(|(k, _)| *k == key) {
                            Some(slot) => slot.1 = value,
                            None => batch.push((key, value)),
                        }
                        next = if batch.len() < MAX_BATCH { changes.try_recv().ok() } else { None };
                    }
                    let ops: Vec<TxnOp> = batch
                        .into_iter()
                        .map(|(key, value)| {
                            let key = format!("{}{key}", cluster.prefix);
                            match value {
                                Some(v) => TxnOp::put(key, v, with_lease()),
                                None => TxnOp::delete(key, None),
                            }
                        })
                        .collect();
                    client.txn(Txn::new().and_then(ops)).await.map_err(e)?;
                }
            }
        }
    }
}
