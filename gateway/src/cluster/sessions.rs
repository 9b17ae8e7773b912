//! The cluster's sessions: each node publishes its sessions under
//! `PREFIX sessions/NODE/CONNECTION_ID`, bound to its own lease, so a dead
//! node's sessions vanish with it (their addresses stay leased to their
//! identities). `connections` on any node lists them all. Each session is
//! also indexed by identity (`PREFIX holders/HEX(IDENTITY)/NODE/ID`), for
//! `max_sessions_per_identity` across nodes; another node's session is
//! ended by asking its node under `PREFIX terminate/NODE/ID` (see
//! `watch`).

use etcd_client::{GetOptions, PutOptions};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::store::{self, Conn, StoreError};
use crate::config::Cluster;
use crate::endpoint::peers::{OtherNodes, RemoteSession};
use crate::endpoint::session::Session;

/// How long a request to end a session waits for its node (a dead
/// node's requests go with this lease).
const TERMINATE_TTL: i64 = 30;

/// A session's key under the cluster's prefix, without the prefix.
pub fn key(node: &str, connection_id: &str) -> String {
    format!("sessions/{node}/{connection_id}")
}

/// An identity as a key segment: hex, since a common name may hold `/`.
fn identity_segment(identity: &str) -> String {
    identity.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A session's key in the identity index, without the prefix.
pub fn holder_key(node: &str, s: &Session) -> String {
    format!(
        "holders/{}/{node}/{}",
        identity_segment(&s.common_name),
        s.connection_id
    )
}

/// A session's entry in the identity index.
pub fn holder(node: &str, s: &Session) -> Vec<u8> {
    serde_json::to_vec(&RemoteSession {
        node: node.to_string(),
        connection_id: s.connection_id.clone(),
        started_ns: s.started.unix_timestamp_nanos(),
    })
    .unwrap_or_default()
}

/// Where a node finds requests to end its sessions, without the prefix.
pub fn terminate_prefix(node: &str) -> String {
    format!("terminate/{node}/")
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

/// The other nodes' sessions, from the store.
pub struct EtcdSessions {
    conn: Conn,
    node: String,
}

impl EtcdSessions {
    /// The sessions of `cluster`'s nodes but this one.
    pub fn new(cluster: Cluster) -> EtcdSessions {
        EtcdSessions {
            node: cluster.node.clone(),
            conn: Conn::new(cluster),
        }
    }

    async fn try_sessions_of(&self, identity: &str) -> Result<Vec<RemoteSession>, StoreError> {
        let mut client = self.conn.client().await?;
        let prefix = format!(
            "{}holders/{}/",
            self.conn.cluster().prefix,
            identity_segment(identity)
        );
        let resp = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<RemoteSession>(kv.value()).ok())
            .filter(|r| r.node != self.node)
            .collect())
    }

    async fn try_terminate(
        &self,
        sessions: &[RemoteSession],
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut client = self.conn.client().await?;
        let e = |source| self.conn.error(source);
        let lease = client
            .lease_grant(TERMINATE_TTL, None)
            .await
            .map_err(e)?
            .id();
        for r in sessions {
            let key = format!(
                "{}{}{}",
                self.conn.cluster().prefix,
                terminate_prefix(&r.node),
                r.connection_id
            );
            let options = PutOptions::new().with_lease(lease);
            client.put(key, reason, Some(options)).await.map_err(e)?;
        }
        Ok(())
    }
}

impl OtherNodes for EtcdSessions {
    fn sessions_of<'a>(
        &'a self,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RemoteSession>, String>> {
        Box::pin(async move {
            match self.try_sessions_of(identity).await {
                Ok(s) => Ok(s),
                Err(e) => Err(self.conn.failed(e).await),
            }
        })
    }

    fn terminate<'a>(
        &'a self,
        sessions: &'a [RemoteSession],
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match self.try_terminate(sessions, reason).await {
                Ok(()) => Ok(()),
                Err(e) => Err(self.conn.failed(e).await),
            }
        })
    }
}
