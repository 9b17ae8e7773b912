//! The metrics listener (`metrics_listen`): `GET /metrics` over plain
//! HTTP/1.x, one request per connection, as Prometheus scrapes. Bind it to
//! a management address: it tells how many people are connected.

use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::endpoint::metrics::{self, Route, Snapshot};
use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Most of a request the listener reads: the request line and headers.
const MAX_REQUEST: u64 = 8 * 1024;

/// Binds the listener and returns the task that serves it.
pub async fn listen(
    ep: Arc<Endpoint>,
    addr: std::net::SocketAddr,
) -> Result<impl std::future::Future<Output = Result<()>>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics_listen: cannot bind {addr}"))?;
    Ok(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let ep = ep.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), answer(&ep, stream)).await;
            });
        }
    })
}

async fn answer(ep: &Endpoint, stream: TcpStream) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::new(rd.take(MAX_REQUEST));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    // The headers are read (and ignored) so the client sees a clean close.
    let mut header = String::new();
    while reader.read_line(&mut header).await? > 2 {
        header.clear();
    }
    let (status, content_type, body) = match metrics::route(&line) {
        Route::Metrics => ("200 OK", metrics::CONTENT_TYPE, body(ep)),
        Route::NotFound => ("404 Not Found", "text/plain", "try /metrics\n".into()),
        Route::MethodNotAllowed => ("405 Method Not Allowed", "text/plain", String::new()),
        Route::BadRequest => ("400 Bad Request", "text/plain", String::new()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    wr.write_all(head.as_bytes()).await?;
    wr.write_all(body.as_bytes()).await?;
    wr.shutdown().await
}

fn body(ep: &Endpoint) -> String {
    let active: Vec<_> = ep
        .sessions
        .all()
        .iter()
        .map(|s| (s.protocol, s.traffic()))
        .collect();
    let free = ep.free_addresses();
    metrics::render(&Snapshot {
        tally: &ep.tally,
        drops: &ep.drops,
        active: &active,
        free_addresses: u64::from(free),
        crl_seconds_to_expiry: crl_seconds_to_expiry(ep),
        cluster: ep.config().cluster.as_ref().map(|_| &ep.cluster_state),
        data_threads: ep.data_threads.get(),
    })
}

/// Seconds until the configured CRL's next update, read from its file.
fn crl_seconds_to_expiry(ep: &Endpoint) -> Option<i64> {
    let path = ep.config().tls.crl.clone()?;
    let der = crate::tls::load_crl(&path).ok()?;
    let next = cvpn_pki::check_crl(der.as_ref(), &[]).ok()?.next_update?;
    Some((next - time::OffsetDateTime::now_utc()).whole_seconds())
}
