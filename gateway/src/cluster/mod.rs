//! One endpoint on several gateways: the shared state in etcd. Without
//! `[cluster]` none of this runs.

pub mod crl;
pub mod leases;
pub mod nodes;
pub mod sessions;
pub mod store;
pub mod watch;

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
        draining: ep.draining(),
    })
}

/// Starts keeping this gateway registered in its cluster and following
/// the requests and CRL other nodes publish (nothing without
/// `[cluster]`); sending `true` on the returned channel stops it
/// and revokes the registration (await the handle).
pub fn start(
    ep: Arc<Endpoint>,
) -> Option<(
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
)> {
    let cluster = ep.config().cluster.clone()?;
    ep.set_shared_leases(Box::new(leases::EtcdLeases::new(cluster.clone())));
    ep.set_other_nodes(Box::new(sessions::EtcdSessions::new(cluster.clone())));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let follower = watch::follow(ep.clone(), cluster.clone(), stopped.clone());
    let fallback = record_of(&ep)?;
    let node = cluster.node.clone();
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    let observer_node = node.clone();
    ep.set_session_observer(Box::new(move |s, started| {
        let node = &observer_node;
        let key = sessions::key(node, &s.connection_id);
        let value = started.then(|| sessions::entry(node, s).to_string().into_bytes());
        let _ = tx.send((key, value));
        let _ = tx.send((
            sessions::holder_key(node, s),
            started.then(|| sessions::holder(node, s)),
        ));
    }));
    let (ep2, ep3, ep4) = (ep.clone(), ep.clone(), ep);
    let record = move || record_of(&ep2).unwrap_or_else(|| fallback.clone());
    let entries = move || {
        ep4.sessions
            .all()
            .iter()
            .flat_map(|s| {
                [
                    (
                        sessions::key(&node, &s.connection_id),
                        sessions::entry(&node, s).to_string().into_bytes(),
                    ),
                    (sessions::holder_key(&node, s), sessions::holder(&node, s)),
                ]
            })
            .collect()
    };
    let report = move |up: bool, beat: Option<(u64, std::time::Duration)>| {
        let state = &ep3.cluster_state;
        state.store_up.store(up, Ordering::Relaxed);
        if let Some((nodes, took)) = beat {
            state.nodes.store(nodes, Ordering::Relaxed);
            state.store_latency.observe(took.as_secs_f64());
        }
    };
    let node = nodes::Node {
        record,
        entries,
        changes,
    };
    let registration = nodes::keep_registered(cluster, node, report, stopped);
    let task = tokio::spawn(async move {
        tokio::join!(registration, follower);
    });
    Some((stop, task))
}

/// Publishes the CRL in force to the cluster (nothing without
/// `[cluster]`); a store that does not answer gets it when the node
/// reconnects (see `watch`).
pub async fn publish_crl(ep: &Endpoint) {
    let (Some(cluster), Some(crl)) = (ep.config().cluster.clone(), ep.crl_in_force()) else {
        return;
    };
    let published = match store::connect(&cluster).await {
        Ok(mut client) => crl::publish(&mut client, &cluster, &crl).await,
        Err(e) => Err(e),
    };
    match published {
        Ok(true) => tracing::info!("published the CRL to the cluster"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot publish the CRL to the cluster now"),
    }
}
