//! One endpoint on several gateways: the shared state in etcd. Without
//! `[cluster]` none of this runs.

pub mod leases;
pub mod nodes;
pub mod sessions;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::digest::policy_digest;
use crate::endpoint::Endpoint;
use nodes::NodeRecord;

/// This gateway's record as the registry publishes it now.
pub fn record_of(ep: &Endpoint) -> Option<NodeRecord> {
    let config = ep.config();
    let cluster = config.cluster.as_ref()?;
    Some(NodeRecord {
        node: cluster.node.clone(),
        advertise: cluster.advertise.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        policy_digest: policy_digest(&config.policy_keys),
        policy: config.policy_keys.clone(),
        sessions: ep.sessions.len() as u64,
        heartbeat: time::OffsetDateTime::now_utc().unix_timestamp(),
    })
}

/// Starts keeping this gateway registered in its cluster (nothing
/// without `[cluster]`); sending `true` on the returned channel stops it
/// and revokes the registration (await the handle).
pub fn start(
    ep: Arc<Endpoint>,
) -> Option<(
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
)> {
    let cluster = ep.config().cluster.clone()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let fallback = record_of(&ep)?;
    let node = cluster.node.clone();
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    let observer_node = node.clone();
    ep.set_session_observer(Box::new(move |s, started| {
        let key = sessions::key(&observer_node, &s.connection_id);
        let value = started.then(|| sessions::entry(&observer_node, s).to_string().into_bytes());
        let _ = tx.send((key, value));
    }));
    let (ep2, ep3, ep4) = (ep.clone(), ep.clone(), ep);
    let record = move || record_of(&ep2).unwrap_or_else(|| fallback.clone());
    let entries = move || {
        ep4.sessions
            .all()
            .iter()
            .map(|s| {
                (
                    sessions::key(&node, &s.connection_id),
                    sessions::entry(&node, s).to_string().into_bytes(),
                )
            })
            .collect()
    };
    let report = move |up: bool, nodes: Option<u64>| {
        let state = &ep3.cluster_state;
        state.store_up.store(up, Ordering::Relaxed);
        if let Some(n) = nodes {
            state.nodes.store(n, Ordering::Relaxed);
        }
    };
    let node = nodes::Node {
        record,
        entries,
        changes,
    };
    let task = tokio::spawn(nodes::keep_registered(cluster, node, report, stopped));
    Some((stop, task))
}
