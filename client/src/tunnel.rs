//! One connection to the endpoint: connect, authenticate, receive the
//! configuration, set up the host, move packets until it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, BytesMut};
use cvpn_client::profile::{Profile, Remote};
use cvpn_proto::{
    ClientHello, Control, EndpointConfig, Frame, HEADER_LEN, MAX_PACKET_FRAME, PROTOCOL_VERSION,
    TlsTunnel, Transport, decode, encode_control, packet_header,
};
use cvpn_tundev::TunDevice;
use ipnet::Ipv4Net;
use rustls::ClientConfig;
use rustls::client::ClientConnectionData;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tracing::{debug, warn};

use crate::datagram::Channel;
use crate::tls;

pub const TUN_NAME: &str = "cvpn0";
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
const READ_RESERVE: usize = cvpn_proto::HEADER_LEN + cvpn_proto::MAX_PACKET_FRAME;
/// Packets gathered from the tun device into one TLS write.
const BATCH_BYTES: usize = 64 * 1024;

/// The endpoint ended the session and asked the client to reconnect at
/// once, to another remote first (its gateway drains).
#[derive(Debug, thiserror::Error)]
#[error("the endpoint moved the session elsewhere: {0}")]
pub struct Moved(pub String);

pub struct Connected {
    /// The remote it reached.
    pub remote: Remote,
    pub stream: TlsTunnel<Transport<TcpStream>, ClientConnectionData>,
    pub config: EndpointConfig,
    pub peer: SocketAddr,
    pub server_name: String,
    /// Bytes read after the configuration message.
    pub leftover: BytesMut,
}

async fn open(profile: &Profile, remote: &Remote, config: Arc<ClientConfig>) -> Result<Connected> {
    let name: ServerName<'static> = tls::server_name(profile, remote)?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((remote.host.as_str(), remote.port))
        .await
        .with_context(|| format!("cannot resolve {}", remote.host))?
        .collect();
    let mut last = anyhow!("{} has no address", remote.host);
    let limit = profile.server_poll_timeout;
    for addr in addrs {
        let tcp = match timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                last = anyhow!("{addr}: {e}");
                continue;
            }
            Err(_) => {
                last = anyhow!("{addr}: connection timed out");
                continue;
            }
        };
        let tcp = Transport::new(tcp)?;
        let handshake = cvpn_proto::tls::connect(tcp, config.clone(), name.clone());
        let mut stream = timeout(limit, handshake)
            .await
            .map_err(|_| anyhow!("{addr}: TLS handshake timed out"))?
            .map_err(|e| anyhow!("{addr}: TLS handshake failed: {e}"))?;
        if stream.alpn_protocol() != Some(cvpn_proto::ALPN) {
            bail!("{addr}: the server did not negotiate ALPN cvpn/1: not a cvpn endpoint");
        }
        let mut hello = BytesMut::new();
        encode_control(
            &mut hello,
            &Control::Hello(ClientHello {
                version: PROTOCOL_VERSION,
                os: std::env::consts::OS.to_string(),
                client: format!("cvpn-client {}", env!("CARGO_PKG_VERSION")),
                datagram: profile.datagram,
                live_routes: true,
            }),
        )?;
        stream.write_all(&hello).await?;
        stream.flush().await?;
        let mut buf = BytesMut::with_capacity(READ_RESERVE);
        let config = timeout(limit, read_config(&mut stream, &mut buf))
            .await
            .map_err(|_| anyhow!("{addr}: no configuration from the endpoint"))??;
        return Ok(Connected {
            remote: remote.clone(),
            stream,
            config,
            peer: addr,
            server_name: profile
                .verify_name
                .clone()
                .unwrap_or_else(|| remote.host.clone()),
            leftover: buf,
        });
    }
    Err(last)
}

async fn read_config<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<EndpointConfig> {
    loop {
        if let Some((frame, n)) = decode(buf)? {
            let msg = match frame {
                Frame::Control(c) => Control::parse(c)?,
                Frame::Packet(_) => bail!("the endpoint sent a packet before its configuration"),
            };
            buf.advance(n);
            match msg {
                Control::Config(c) => return Ok(c),
                Control::Disconnect { reason } => bail!("refused by the endpoint: {reason}"),
                other => bail!("unexpected message before the configuration: {other:?}"),
            }
        }
        buf.reserve(READ_RESERVE);
        let n = rd
            .read_buf(buf)
            .await
            .map_err(|e| classify_read_error(&e))?;
        if n == 0 {
            bail!("the endpoint closed the connection");
        }
    }
}

/// A TLS alert from the server surfaces as a read error: say what it means.
fn classify_read_error(e: &std::io::Error) -> anyhow::Error {
    anyhow!("refused by the endpoint: {e}")
}

/// Tries each remote in turn (shuffled with `remote-random`), `avoid`
/// (the one just lost or left) last.
pub async fn connect(
    profile: &Profile,
    config: Arc<ClientConfig>,
    avoid: Option<&Remote>,
) -> Result<Connected> {
    let mut remotes = profile.remotes.clone();
    if profile.remote_random {
        use rand::seq::SliceRandom;
        remotes.shuffle(&mut rand::rng());
    }
    if let Some(i) = avoid.and_then(|a| remotes.iter().position(|r| r == a)) {
        let last = remotes.remove(i);
        remotes.push(last);
    }
    let mut errors = Vec::new();
    for r in &remotes {
        match open(profile, r, config.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                warn!("{}:{}: {e:#}", r.host, r.port);
                errors.push(format!("{}:{}: {e:#}", r.host, r.port));
            }
        }
    }
    Err(anyhow!("{}", errors.join("; ")))
}

/// Moves packets both ways until the connection ends; returns why.
pub async fn run<S>(
    stream: &mut S,
    leftover: BytesMut,
    tun: &TunDevice,
    keepalive: Duration,
    datagram: Option<&Channel>,
    routes: &watch::Sender<Option<Vec<Ipv4Net>>>,
) -> Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let idle = keepalive * 3 + Duration::from_secs(5);
    let datagrams = async {
        match datagram {
            Some(c) => c.run(tun).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = endpoint_to_tun(&mut rd, leftover, tun, idle, routes) => r,
        r = tun_to_endpoint(&mut wr, tun, keepalive, datagram) => r,
        r = datagrams => r,
    }
}

async fn endpoint_to_tun<R: AsyncRead + Unpin>(
    rd: &mut R,
    mut buf: BytesMut,
    tun: &TunDevice,
    idle: Duration,
    routes: &watch::Sender<Option<Vec<Ipv4Net>>>,
) -> Result<String> {
    // One timer, pushed back before each read: cheaper than one per read.
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    loop {
        let mut pos = 0;
        while let Some((frame, n)) = decode(&buf[pos..])? {
            pos += n;
            match frame {
                Frame::Packet(p) => {
                    if let Err(e) = tun.send(p).await {
                        debug!("tun write: {e}");
                    }
                }
                Frame::Control(c) => match Control::parse(c)? {
                    Control::Keepalive => {}
                    Control::Disconnect { reason } => {
                        return Ok(format!("the endpoint ended the session: {reason}"));
                    }
                    Control::Reconnect { reason } => return Err(Moved(reason).into()),
                    // Applied by the session beside this loop; a newer
                    // list replaces one not yet applied.
                    Control::Routes { routes: r } => {
                        routes.send_replace(Some(r));
                    }
                    other => debug!("ignoring {other:?}"),
                },
            }
        }
        buf.advance(pos);
        buf.reserve(READ_RESERVE);
        deadline.as_mut().reset(Instant::now() + idle);
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = deadline.as_mut() => {
                return Err(anyhow!("connection lost: the endpoint stopped answering"));
            }
        };
        match read {
            // Closed without a word (a disconnect message comes first
            // otherwise): the endpoint died.
            Ok(0) => {
                return Err(anyhow!(
                    "connection lost: the endpoint closed the connection"
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(anyhow!("connection lost: {e}")),
        }
    }
}

async fn tun_to_endpoint<W: AsyncWrite + Unpin>(
    wr: &mut W,
    tun: &TunDevice,
    keepalive: Duration,
    datagram: Option<&Channel>,
) -> Result<String> {
    // Packets are read from the tun device straight behind their frame
    // header: the only copy on the way out is the one TLS sealing makes.
    let mut out = vec![0u8; BATCH_BYTES + HEADER_LEN + MAX_PACKET_FRAME];
    let mut control = BytesMut::new();
    let tick = tokio::time::sleep(keepalive);
    tokio::pin!(tick);
    loop {
        let slot = |at: usize| at + HEADER_LEN..at + HEADER_LEN + MAX_PACKET_FRAME;
        let mut len = 0;
        let mut idle = false;
        tick.as_mut().reset(Instant::now() + keepalive);
        let read = tokio::select! {
            r = tun.recv(&mut out[slot(0)]) => Some(r),
            _ = tick.as_mut() => None,
        };
        match read {
            Some(Ok(n)) => {
                len = stream_or_datagram(&mut out, 0, n, datagram);
                // Gather what is already queued, without waiting, into the
                // same TLS write.
                while len < BATCH_BYTES {
                    match tun.try_recv(&mut out[slot(len)]) {
                        Some(Ok(n)) => len = stream_or_datagram(&mut out, len, n, datagram),
                        _ => break,
                    }
                }
            }
            Some(Err(e)) => return Err(anyhow!("reading {TUN_NAME}: {e}")),
            None => {
                control.clear();
                encode_control(&mut control, &Control::Keepalive)?;
                idle = true;
            }
        }
        let bytes = if idle { &control[..] } else { &out[..len] };
        if bytes.is_empty() {
            continue;
        }
        wr.write_all(bytes)
            .await
            .map_err(|e| anyhow!("connection lost: {e}"))?;
        wr.flush()
            .await
            .map_err(|e| anyhow!("connection lost: {e}"))?;
    }
}

/// Sends the `n` bytes read at `at` + HEADER_LEN as a datagram if it can,
/// else frames them for the stream; returns where the next frame goes.
fn stream_or_datagram(out: &mut [u8], at: usize, n: usize, datagram: Option<&Channel>) -> usize {
    let packet = &out[at + HEADER_LEN..at + HEADER_LEN + n];
    // The tunnel carries IPv4 only: anything else would only be counted
    // as malformed by the gateway.
    if packet.get(cvpn_proto::VNET_HDR_LEN).map(|b| b >> 4) != Some(4) {
        return at;
    }
    if datagram.is_some_and(|c| c.try_send_packet(packet)) {
        return at;
    }
    frame_in_place(out, at, n)
}

/// Puts the frame header in front of the `n` bytes read at `at` +
/// HEADER_LEN; returns where the next frame goes. A packet no frame can
/// carry (shorter than an IPv4 header) is dropped.
fn frame_in_place(out: &mut [u8], at: usize, n: usize) -> usize {
    match packet_header(n) {
        Ok(h) => {
            out[at..at + HEADER_LEN].copy_from_slice(&h);
            at + HEADER_LEN + n
        }
        Err(_) => at,
    }
}

/// Tells the endpoint we are leaving.
pub async fn say_goodbye<S: AsyncWrite + Unpin>(stream: &mut S, reason: &str) {
    let mut buf = BytesMut::new();
    if encode_control(
        &mut buf,
        &Control::Disconnect {
            reason: reason.into(),
        },
    )
    .is_ok()
    {
        let _ = timeout(Duration::from_secs(1), async {
            stream.write_all(&buf).await?;
            stream.shutdown().await
        })
        .await;
    }
}
