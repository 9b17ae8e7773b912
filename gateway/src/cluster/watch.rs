//! What a node follows in the store: requests to end its sessions
//! (`PREFIX terminate/NODE/ID`, written by another node's `terminate` or
//! admission) and the cluster's CRL (`PREFIX crl`). The watch resumes
//! from the revision after the last event it saw when the store comes
//! back; when that revision was compacted away, or at the start, the
//! keys are listed anew.

use std::sync::Arc;
use std::time::Duration;

use cvpn_proto::text::untrusted;
use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use tracing::{info, warn};

use super::store::{self, StoreError};
use super::{crl, sessions};
use crate::config::Cluster;
use crate::endpoint::Endpoint;
use crate::endpoint::revocation::{Source, Taken};

/// The longest reason a request to end a session gives that is kept.
const MAX_REASON: usize = 200;

/// Follows the store until `stop`; reconnects by itself after an outage.
pub async fn follow(
    ep: Arc<Endpoint>,
    cluster: Cluster,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut resume = None;
    loop {
        let outcome = tokio::select! {
            r = follow_once(&ep, &cluster, &mut resume) => r,
            _ = stop.changed() => return,
        };
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "cluster watch interrupted");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One connection's worth: list (unless resuming), then watch until the
/// stream ends. `resume` is the revision to watch from next.
async fn follow_once(
    ep: &Endpoint,
    cluster: &Cluster,
    resume: &mut Option<i64>,
) -> Result<(), StoreError> {
    let e = |source| store::etcd_error(cluster, source);
    let mut client = store::connect(cluster).await?;
    // A CRL taken while the store was away reaches the others now.
    if let Some(ours) = ep.crl_in_force()
        && crl::publish(&mut client, cluster, &ours).await?
    {
        info!("published this node's CRL to the cluster");
    }
    let start = match *resume {
        Some(rev) => rev,
        None => list(ep, cluster, &mut client).await? + 1,
    };
    let requests = format!(
        "{}{}",
        cluster.prefix,
        sessions::terminate_prefix(&cluster.node)
    );
    let from = |o: WatchOptions| Some(o.with_start_revision(start));
    let mut stream = client
        .watch(requests.clone(), from(WatchOptions::new().with_prefix()))
        .await
        .map_err(e)?;
    stream
        .watch(crl::key(cluster), from(WatchOptions::new()))
        .await
        .map_err(e)?;
    *resume = Some(start);
    while let Some(resp) = stream.message().await.map_err(e)? {
        if resp.compact_revision() > 0 || resp.canceled() {
            // Events from `start` are gone: list anew.
            info!(
                revision = start,
                "cluster watch fell behind a compaction; listing anew"
            );
            *resume = None;
            return Ok(());
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            *resume = Some(kv.mod_revision() + 1);
            if event.event_type() == EventType::Put {
                act(ep, cluster, &mut client, kv).await;
            }
        }
    }
    Ok(())
}

/// Acts on every key present, at one revision, which is returned.
async fn list(ep: &Endpoint, cluster: &Cluster, client: &mut Client) -> Result<i64, StoreError> {
    let e = |source| store::etcd_error(cluster, source);
    let requests = format!(
        "{}{}",
        cluster.prefix,
        sessions::terminate_prefix(&cluster.node)
    );
    let resp = client
        .get(requests, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(e)?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let at = GetOptions::new().with_revision(revision);
    let stored_crl = client.get(crl::key(cluster), Some(at)).await.map_err(e)?;
    for kv in resp.kvs().iter().chain(stored_crl.kvs()) {
        act(ep, cluster, client, kv).await;
    }
    Ok(revision)
}

/// Ends the session a request names, or takes the CRL.
async fn act(ep: &Endpoint, cluster: &Cluster, client: &mut Client, kv: &KeyValue) {
    let key = String::from_utf8_lossy(kv.key());
    if key == crl::key(cluster) {
        match ep.take_crl(kv.value(), Source::Cluster) {
            Ok(Taken::Newer(ended)) => info!(ended, "took a newer CRL from the cluster"),
            Ok(Taken::NotNewer) => {}
            Err(why) => warn!(%why, "the cluster's CRL is refused"),
        }
        return;
    }
    let Some(id) = key.rsplit('/').next() else {
        return;
    };
    let reason: String = String::from_utf8_lossy(kv.value())
        .chars()
        .take(MAX_REASON)
        .collect();
    if let Some(s) = ep
        .sessions
        .all()
        .into_iter()
        .find(|s| s.connection_id == id)
    {
        info!(connection_id = %s.connection_id, reason = %untrusted(&reason),
              "ending a session at another node's request");
        s.terminate(&reason);
    }
    // Done (or the session is gone already): the request goes.
    let _ = client.delete(kv.key(), None).await;
}
