//! The admin socket: one JSON request per connection, one JSON answer.
//! `{"command":"connections"}` lists sessions; `{"command":"terminate",
//! "connection_id":ID}` or `{"command":"terminate","common_name":CN}` ends
//! them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::endpoint::Endpoint;
use crate::endpoint::peers::RemoteSession;

/// A request on the admin socket.
#[derive(Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// List the live sessions and the drop counters.
    Connections,
    /// Re-read and apply the configuration file (as SIGHUP).
    Reload,
    /// Reopen the connection log and the flow log under their names
    /// (as SIGUSR1), after logrotate moved them.
    ReopenLogs,
    /// Refuse new sessions, move every client to another gateway, and
    /// exit once empty or after `timeout_secs`.
    Drain {
        /// How long the clients have to leave.
        timeout_secs: u64,
    },
    /// End sessions by connection id or common name.
    Terminate {
        /// The session's connection id.
        connection_id: Option<String>,
        /// Every session of this certificate common name.
        common_name: Option<String>,
    },
}

/// Binds `path` so that no one else can connect at any moment: the
/// socket is made inside a new directory only we can enter, set to 0600,
/// then renamed into place (no umask change, which would be process-wide).
fn bind_private(path: &Path) -> Result<UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("control_socket: {}", dir.display()))?;
    let private = tempfile::Builder::new()
        .prefix(".cvpn-ep-sock.")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(dir)
        .with_context(|| {
            format!(
                "control_socket: cannot create a directory in {}",
                dir.display()
            )
        })?;
    let inner = private.path().join("sock");
    let listener = UnixListener::bind(&inner)
        .with_context(|| format!("control_socket: cannot bind {}", path.display()))?;
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&inner, path)
        .with_context(|| format!("control_socket: cannot bind {}", path.display()))?;
    Ok(listener)
}

/// Binds the socket (mode 0600: it can end anyone's session) and returns
/// the task that serves it. An accept error (out of descriptors and the
/// like) pauses the task, never ends it.
pub async fn listen(ep: Arc<Endpoint>) -> Result<impl std::future::Future<Output = Result<()>>> {
    let listener = bind_private(&ep.config().control_socket)?;
    Ok(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let ep = ep.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), answer(ep, stream)).await;
            });
        }
    })
}

async fn answer(ep: Arc<Endpoint>, stream: UnixStream) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(rd.take(64 * 1024))
        .read_line(&mut line)
        .await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => respond(&ep, req).await,
        Err(e) => json!({ "error": format!("bad request: {e}") }),
    };
    wr.write_all(format!("{reply}\n").as_bytes()).await?;
    wr.shutdown().await
}

/// Adds the sessions of the cluster's other nodes to a `connections`
/// reply (with `[cluster]`); if the store does not answer, says so in
/// `cluster-error` and lists this node's alone.
async fn with_other_nodes(ep: &Endpoint, reply: &mut Value) {
    let Some(cluster) = ep.config().cluster.clone() else {
        return;
    };
    match crate::cluster::sessions::others(&cluster, &cluster.node).await {
        Ok(others) => {
            if let Some(list) = reply["connections"].as_array_mut() {
                list.extend(others);
            }
        }
        Err(e) => reply["cluster-error"] = json!(e.to_string()),
    }
}

/// Asks the cluster's other nodes (with `[cluster]`) to end the sessions
/// a `terminate` names, adding them to the reply's `terminated`; if the
/// store does not answer, says so in `cluster-error`.
async fn terminate_elsewhere(
    ep: &Endpoint,
    (connection_id, common_name): (Option<String>, Option<String>),
    reply: &mut Value,
) {
    let (Some(cluster), Some(others)) = (ep.config().cluster.clone(), ep.other_nodes()) else {
        return;
    };
    let mut found = Vec::new();
    let mut failed = None;
    if let Some(cn) = &common_name {
        match others.sessions_of(cn).await {
            Ok(s) => found.extend(s),
            Err(e) => failed = Some(e),
        }
    }
    if let Some(id) = &connection_id {
        match crate::cluster::sessions::others(&cluster, &cluster.node).await {
            Ok(list) => found.extend(
                list.iter()
                    .filter(|v| v["connection-id"] == id.as_str())
                    .map(|v| RemoteSession {
                        node: v["node"].as_str().unwrap_or_default().to_string(),
                        connection_id: id.clone(),
                        started_ns: 0,
                    }),
            ),
            Err(e) => failed = Some(e.to_string()),
        }
    }
    if !found.is_empty()
        && let Err(e) = others
            .terminate(&found, "terminated by the administrator")
            .await
    {
        failed = Some(e);
        found.clear();
    }
    if let Some(list) = reply["terminated"].as_array_mut() {
        list.extend(found.into_iter().map(|r| json!(r.connection_id)));
    }
    if let Some(e) = failed {
        reply["cluster-error"] = json!(e);
    }
}

async fn respond(ep: &Endpoint, req: Request) -> Value {
    match req {
        Request::Connections => {
            let mut reply = connections(ep);
            with_other_nodes(ep, &mut reply).await;
            reply
        }
        Request::Reload => match ep.reload() {
            Ok(changed) => json!({ "reloaded": true, "changed": changed }),
            Err(e) => json!({ "error": e.to_string() }),
        },
        Request::ReopenLogs => match ep.reopen_logs() {
            Ok(logs) => json!({ "reopened": logs }),
            Err(e) => json!({ "error": e }),
        },
        Request::Drain { timeout_secs } => {
            let told = ep.drain(Duration::from_secs(timeout_secs)).await;
            json!({ "draining": told })
        }
        Request::Terminate {
            connection_id,
            common_name,
        } => {
            let mut ended = Vec::new();
            for s in ep.sessions.all() {
                let hit = connection_id.as_deref() == Some(&s.connection_id)
                    || common_name.as_deref() == Some(&s.common_name);
                if hit {
                    s.terminate("terminated by the administrator");
                    ended.push(s.connection_id.clone());
                }
            }
            let mut reply = json!({ "terminated": ended });
            terminate_elsewhere(ep, (connection_id, common_name), &mut reply).await;
            reply
        }
    }
}

/// This node's sessions and drop counters.
fn connections(ep: &Endpoint) -> Value {
    let node = ep.config().cluster.as_ref().map(|c| c.node.clone());
    let list: Vec<Value> = ep
        .sessions
        .all()
        .iter()
        .map(|s| {
            let c = &s.counters;
            let mut v = s.describe();
            let stale = s.routes_generation.load(Ordering::Relaxed) < ep.routes_generation();
            for (key, n) in [
                ("ingress-bytes", c.ingress_bytes.load(Ordering::Relaxed)),
                ("egress-bytes", c.egress_bytes.load(Ordering::Relaxed)),
                ("ingress-packets", c.ingress_packets.load(Ordering::Relaxed)),
                ("egress-packets", c.egress_packets.load(Ordering::Relaxed)),
            ] {
                v[key] = json!(n);
            }
            v["stale-routes"] = json!(stale);
            if let Some(node) = &node {
                v["node"] = json!(node);
            }
            v
        })
        .collect();
    let d = &ep.drops;
    let threads: Vec<Value> = ep.data_threads.get().map_or(Vec::new(), |t| {
        t.rows()
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let mut v = json!({ "thread": i, "tun-queue": i });
                for (key, n) in row.values() {
                    v[key.replace('_', "-")] = json!(n);
                }
                v
            })
            .collect()
    });
    json!({
        "connections": list,
        "data-threads": threads,
        "drops": {
            "spoofed": d.spoofed.load(Ordering::Relaxed),
            "no_route": d.no_route.load(Ordering::Relaxed),
            "denied": d.denied.load(Ordering::Relaxed),
            "malformed": d.malformed.load(Ordering::Relaxed),
            "ipv6": d.ipv6.load(Ordering::Relaxed),
            "no_session": d.no_session.load(Ordering::Relaxed),
            "queue_full": d.queue_full.load(Ordering::Relaxed),
        }
    })
}

/// Client side, for `cvpn-ep connections` and `terminate`.
pub async fn request(socket: &Path, req: Value) -> Result<Value> {
    let mut stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the endpoint's control socket {}",
            socket.display()
        )
    })?;
    stream.write_all(format!("{req}\n").as_bytes()).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let v: Value = serde_json::from_str(&text).context("malformed answer on the control socket")?;
    if let Some(e) = v.get("error") {
        bail!(
            "{}",
            e.as_str().map(str::to_string).unwrap_or(e.to_string())
        );
    }
    Ok(v)
}
