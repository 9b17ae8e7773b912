//! Addresses shared by the cluster: an identity keeps one address across
//! every node. `PREFIX leases/id/IDENTITY` holds its address and
//! `PREFIX leases/addr/ADDRESS` its identity, both created together by a
//! put-if-absent transaction, so two nodes never lease one address to two
//! identities, partition or not (a node that cannot reach etcd admits no
//! one). Leases are kept while nodes come and go, as the file lease table
//! of a single gateway keeps them.

use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use futures::future::BoxFuture;

use super::store::{Conn, StoreError};
use crate::config::Cluster;
use crate::endpoint::{Claim, SharedLeases};

/// The cluster's lease table in etcd.
pub struct EtcdLeases {
    conn: Conn,
}

impl EtcdLeases {
    /// Leases of `cluster` (connects on first use, and again after a
    /// failure).
    pub fn new(cluster: Cluster) -> EtcdLeases {
        EtcdLeases {
            conn: Conn::new(cluster),
        }
    }

    fn id_key(&self, identity: &str) -> String {
        format!("{}leases/id/{identity}", self.conn.cluster().prefix)
    }

    fn addr_key(&self, addr: Ipv4Addr) -> String {
        format!("{}leases/addr/{addr}", self.conn.cluster().prefix)
    }

    async fn try_leased(&self, identity: &str) -> Result<Option<Ipv4Addr>, StoreError> {
        let mut client = self.conn.client().await?;
        let resp = client
            .get(self.id_key(identity), None)
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok()?.parse().ok()))
    }

    async fn try_claim(&self, identity: &str, addr: Ipv4Addr) -> Result<Claim, StoreError> {
        let mut client = self.conn.client().await?;
        let (id_key, addr_key) = (self.id_key(identity), self.addr_key(addr));
        let txn = Txn::new()
            .when([
                Compare::create_revision(id_key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(addr_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(id_key.clone(), addr.to_string(), None),
                TxnOp::put(addr_key.clone(), identity, None),
            ])
            .or_else([TxnOp::get(id_key, None), TxnOp::get(addr_key, None)]);
        let resp = client.txn(txn).await.map_err(|e| self.conn.error(e))?;
        if resp.succeeded() {
            return Ok(Claim::Claimed);
        }
        let values: Vec<Option<String>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .and_then(|kv| kv.value_str().ok().map(str::to_string)),
                _ => None,
            })
            .collect();
        let (ours, holder) = (
            values.first().cloned().flatten(),
            values.get(1).cloned().flatten(),
        );
        Ok(match (ours.and_then(|a| a.parse().ok()), holder) {
            (Some(a), _) if a == addr => Claim::Claimed,
            (Some(a), _) => Claim::YoursIs(a),
            (None, Some(h)) => Claim::HeldBy(h),
            // Gone in between: the next try may create both.
            (None, None) => Claim::HeldBy(String::new()),
        })
    }
}

impl SharedLeases for EtcdLeases {
    fn leased<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<Option<Ipv4Addr>, String>> {
        Box::pin(async move {
            match self.try_leased(identity).await {
                Ok(a) => Ok(a),
                Err(e) => Err(self.conn.failed(e).await),
            }
        })
    }

    fn claim<'a>(
        &'a self,
        identity: &'a str,
        addr: Ipv4Addr,
    ) -> BoxFuture<'a, Result<Claim, String>> {
        Box::pin(async move {
            match self.try_claim(identity, addr).await {
                Ok(c) => Ok(c),
                Err(e) => Err(self.conn.failed(e).await),
            }
        })
    }
}
