//! The cluster's CRL, under `PREFIX crl`: a node whose CRL is newer (a
//! higher CRL number) than the stored one publishes it; every node takes
//! a stored one that is newer than its own and signed by its client CA
//! (see `watch`). An older one never replaces a newer one: the put is a
//! transaction on the key's revision.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::store::{self, StoreError};
use crate::config::Cluster;
use crate::endpoint::revocation::{CrlInForce, higher};

/// How often a publication is retried when another node's wins the race.
const ATTEMPTS: usize = 5;

/// The CRL's key.
pub fn key(cluster: &Cluster) -> String {
    format!("{}crl", cluster.prefix)
}

/// The number of a stored CRL (one that does not parse counts as none).
fn number_of(der: &[u8]) -> Vec<u8> {
    cvpn_pki::check_crl(der, &[])
        .map(|c| c.number)
        .unwrap_or_default()
}

/// Publishes `crl` unless the store holds one at least as new. Ok(true):
/// published.
pub async fn publish(
    client: &mut Client,
    cluster: &Cluster,
    crl: &CrlInForce,
) -> Result<bool, StoreError> {
    let key = key(cluster);
    let e = |source| store::etcd_error(cluster, source);
    for _ in 0..ATTEMPTS {
        let resp = client.get(key.clone(), None).await.map_err(e)?;
        let seen = resp.kvs().first();
        if let Some(kv) = seen
            && !higher(&crl.number, &number_of(kv.value()))
        {
            return Ok(false);
        }
        let unchanged = match seen {
            Some(kv) => Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        };
        let txn =
            Txn::new()
                .when([unchanged])
                .and_then([TxnOp::put(key.clone(), crl.der.clone(), None)]);
        if client.txn(txn).await.map_err(e)?.succeeded() {
            return Ok(true);
        }
    }
    Ok(false)
}
