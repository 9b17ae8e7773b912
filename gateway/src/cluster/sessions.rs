//! The cluster's sessions: each node publishes its sessions under
//! `PREFIX sessions/NODE/CONNECTION_ID`, bound to its own lease, so a dead
//! node's sessions vanish with it (their addresses stay leased to their
//! identities). `connections` on any node lists them all.

use etcd_client::GetOptions;
use serde_json::{Value, json};

use super::store::{self, StoreError};
use crate::config::Cluster;
use crate::endpoint::session::Session;

/// A session's key under the cluster's prefix, without the prefix.
pub fn key(node: &str, connection_id: &str) -> String {
    format!("sessions/{node}/{connection_id}")
}

/// What a node publishes of a session: the fields `connections` shows,
/// but the counters (a node's own sessions show live ones).
pub fn entry(node: &str, s: &Session) -> Value {
    let mut v = s.describe();
    v["node"] = json!(node);
    v
}

/// Every session the cluster's nodes publish, but `except_node`'s.
pub async fn others(cluster: &Cluster, except_node: &str) -> Result<Vec<Value>, StoreError> {
    let mut client = store::connect(cluster).await?;
    let resp = client
        .get(
            format!("{}sessions/", cluster.prefix),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| store::etcd_error(cluster, e))?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(kv.value()).ok())
        .filter(|v| v["node"] != except_node)
        .collect())
}
