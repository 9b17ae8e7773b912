//! The connection to the cluster's etcd: the members of `[cluster] etcd`,
//! with TLS when configured, and short timeouts so that a store outage is
//! seen in seconds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::Cluster;

/// How long connecting to etcd may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the store could not be reached or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A TLS file of `[cluster]` could not be read.
    #[error("cluster.{key}: {path}: {source}")]
    TlsFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// etcd answered with an error, or not at all.
    #[error("etcd ({endpoints}): {source}")]
    Etcd {
        endpoints: String,
        source: etcd_client::Error,
    },
}

fn read(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::TlsFile {
        key,
        path: path.display().to_string(),
        source,
    })
}

/// Where the next connection starts among the members: each connection
/// after a failure tries the next member first.
static NEXT_MEMBER: AtomicUsize = AtomicUsize::new(0);

/// Connects to one of the cluster's etcd members that answers, trying
/// each in turn. One member at a time, rather than the client's balanced
/// channel over all: that one keeps picking a member that is down.
pub async fn connect(cluster: &Cluster) -> Result<Client, StoreError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if cluster.etcd_ca.is_some() || cluster.etcd_identity.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &cluster.etcd_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read("etcd_ca", ca)?));
        }
        if let Some((cert, key)) = &cluster.etcd_identity {
            tls = tls.identity(Identity::from_pem(
                read("etcd_cert", cert)?,
                read("etcd_key", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    let members = &cluster.etcd;
    let first = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed);
    let mut last = None;
    for i in 0..members.len() {
        let member = &members[(first + i) % members.len()];
        let answered = async {
            let mut client = Client::connect([member], Some(options.clone())).await?;
            client.status().await?;
            Ok::<_, etcd_client::Error>(client)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT + REQUEST_TIMEOUT, answered).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(etcd_client::Error::InvalidArgs(format!(
                    "{member}: no answer"
                )))
            }
        }
    }
    let source = last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd member".into()));
    Err(etcd_error(cluster, source))
}

/// An etcd error, naming the members asked.
pub fn etcd_error(cluster: &Cluster, source: etcd_client::Error) -> StoreError {
    StoreError::Etcd {
        endpoints: cluster.etcd.join(","),
        source,
    }
}

/// A connection made on first use and made anew after a failure: what
/// the admission path shares (one connection, not one per client).
pub struct Conn {
    cluster: Cluster,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Conn {
    /// A connection to `cluster`'s store, not made yet.
    pub fn new(cluster: Cluster) -> Conn {
        Conn {
            cluster,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The cluster this connects to.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The connection, made now if there is none.
    pub async fn client(&self) -> Result<Client, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.cluster).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection after a failure (the next call connects
    /// anew) and says what failed.
    pub async fn failed(&self, e: StoreError) -> String {
        *self.client.lock().await = None;
        e.to_string()
    }

    /// An etcd error of this cluster.
    pub fn error(&self, source: etcd_client::Error) -> StoreError {
        etcd_error(&self.cluster, source)
    }
}
