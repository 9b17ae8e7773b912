//! `cvpn-load`: opens N concurrent mutual-TLS sessions to an endpoint with
//! the wire protocol (no tun device here), sends an ICMP echo through each
//! and checks the reply comes back, and reports handshakes per second,
//! failures by reason and the gateway's resident memory per idle session.

mod icmp;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, BytesMut};
use clap::Parser;
use cvpn_proto::{
    ClientHello, Control, EndpointConfig, Frame, PROTOCOL_VERSION, decode, encode_control,
    encode_packet,
};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

#[derive(Parser)]
#[command(
    name = "cvpn-load",
    about = "Many concurrent mutual-TLS sessions against a cvpn endpoint"
)]
struct Args {
    /// The endpoint, IP:PORT
    #[arg(long)]
    remote: SocketAddr,
    /// Name on the endpoint's certificate
    #[arg(long, default_value = "vpn.example.com")]
    server_name: String,
    /// CA directory holding PREFIX-1 .. PREFIX-COUNT (`cvpn-pki issue client PREFIX --count N`)
    #[arg(long)]
    pki: PathBuf,
    /// Certificate names are PREFIX-1 .. PREFIX-COUNT
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Sessions to open
    #[arg(long)]
    count: usize,
    /// Handshakes in flight at once
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Send an ICMP echo to this address through every session and wait for the reply
    #[arg(long)]
    ping: Option<Ipv4Addr>,
    /// Seconds to hold the sessions idle before measuring memory and closing
    #[arg(long, default_value_t = 2)]
    hold: u64,
    /// The gateway's pid, to report its resident memory per idle session
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// The report as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Handshake,
    Ping,
    Hold,
    Stop,
}

enum Report {
    Established,
    Failed(String),
    Ping(Result<(), String>),
}

const STEP_TIMEOUT: Duration = Duration::from_secs(20);
const KEEPALIVE: Duration = Duration::from_secs(10);

fn configs(args: &Args) -> Result<Vec<Arc<ClientConfig>>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    let ca = args.pki.join("ca.crt");
    for c in CertificateDer::pem_file_iter(&ca).with_context(|| ca.display().to_string())? {
        roots.add(c?)?;
    }
    let roots = Arc::new(roots);
    (1..=args.count)
        .map(|i| {
            let name = format!("{}-{i}", args.prefix);
            let cert = args.pki.join("issued").join(format!("{name}.crt"));
            let key = args.pki.join("private").join(format!("{name}.key"));
            let chain = CertificateDer::pem_file_iter(&cert)
                .with_context(|| {
                    format!(
                        "{}: issue it with `cvpn-pki issue client {} --count N`",
                        cert.display(),
                        args.prefix
                    )
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let key =
                PrivateKeyDer::from_pem_file(&key).with_context(|| key.display().to_string())?;
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(chain, key)?;
            // Every handshake is a full one: that is what is measured.
            c.resumption = Resumption::disabled();
            c.alpn_protocols = vec![cvpn_proto::ALPN.to_vec()];
            Ok(Arc::new(c))
        })
        .collect()
}

struct Session {
    tls: TlsStream<TcpStream>,
    buf: BytesMut,
    config: EndpointConfig,
}

async fn handshake(
    remote: SocketAddr,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> Result<Session> {
    let tcp = TcpStream::connect(remote)
        .await
        .map_err(|e| anyhow!("connect: {e}"))?;
    tcp.set_nodelay(true)?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| anyhow!("TLS: {e}"))?;
    let mut out = BytesMut::new();
    encode_control(
        &mut out,
        &Control::Hello(ClientHello {
            version: PROTOCOL_VERSION,
            os: "load".into(),
            client: "cvpn-load".into(),
            datagram: false,
            live_routes: false,
        }),
    )?;
    tls.write_all(&out).await?;
    tls.flush().await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some((frame, n)) = decode(&buf)? {
            let msg = match frame {
                Frame::Control(c) => Control::parse(c)?,
                Frame::Packet(_) => bail!("packet before config"),
            };
            buf.advance(n);
            match msg {
                Control::Config(config) => return Ok(Session { tls, buf, config }),
                Control::Disconnect { reason } => bail!("refused: {reason}"),
                _ => continue,
            }
        }
        if tls
            .read_buf(&mut buf)
            .await
            .map_err(|e| anyhow!("refused: {e}"))?
            == 0
        {
            bail!("closed before config");
        }
    }
}

/// Reads frames until `done` says a packet is the one awaited.
async fn await_packet(s: &mut Session, done: impl Fn(&[u8]) -> bool) -> Result<()> {
    loop {
        while let Some((frame, n)) = decode(&s.buf)? {
            let hit = matches!(frame, Frame::Packet(p) if done(p));
            if let Frame::Control(c) = frame
                && let Ok(Control::Disconnect { reason }) = Control::parse(c)
            {
                bail!("ended by the endpoint: {reason}");
            }
            s.buf.advance(n);
            if hit {
                return Ok(());
            }
        }
        if s.tls.read_buf(&mut s.buf).await? == 0 {
            bail!("closed");
        }
    }
}

/// Echo request through the session until a reply comes back: up to
/// three tries, as ping would, since the tunnel carries datagrams that a
/// full queue on the way may drop.
async fn ping(s: &mut Session, dst: Ipv4Addr, id: u16) -> Result<()> {
    let me = s.config.address;
    for seq in 1..=3u16 {
        let mut out = BytesMut::new();
        encode_packet(&mut out, &icmp::echo_frame(me, dst, id, seq))?;
        s.tls.write_all(&out).await?;
        s.tls.flush().await?;
        let reply = await_packet(s, |p| {
            icmp::is_echo_reply(
                p.get(cvpn_proto::VNET_HDR_LEN..).unwrap_or(&[]),
                me,
                id,
                seq,
            )
        });
        if let Ok(r) = timeout(Duration::from_secs(2), reply).await {
            return r;
        }
    }
    bail!("no echo reply")
}

async fn run_session(
    i: usize,
    args: Arc<Args>,
    config: Arc<ClientConfig>,
    gate: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
    report: mpsc::UnboundedSender<Report>,
) {
    let name = ServerName::try_from(args.server_name.clone()).expect("checked in main");
    let permit = gate.acquire_owned().await;
    let mut s = match timeout(STEP_TIMEOUT, handshake(args.remote, name, config)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return drop(report.send(Report::Failed(format!("{e:#}")))),
        Err(_) => return drop(report.send(Report::Failed("handshake timed out".into()))),
    };
    drop(permit);
    let _ = report.send(Report::Established);
    let _ = phase.wait_for(|p| *p != Phase::Handshake).await;
    let pinging = *phase.borrow() == Phase::Ping;
    if let Some(dst) = args.ping.filter(|_| pinging) {
        let r = timeout(STEP_TIMEOUT, ping(&mut s, dst, i as u16)).await;
        let _ = report.send(Report::Ping(match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err("no echo reply".into()),
        }));
    }
    // Idle: answer nothing, send keepalives so the endpoint keeps us.
    let mut ka = BytesMut::new();
    let _ = encode_control(&mut ka, &Control::Keepalive);
    let mut sink = [0u8; 2048];
    loop {
        tokio::select! {
            r = phase.changed() => if r.is_err() || *phase.borrow() == Phase::Stop { break },
            _ = tokio::time::sleep(KEEPALIVE) => {
                if s.tls.write_all(&ka).await.is_err() { return; }
                let _ = s.tls.flush().await;
            }
            r = s.tls.read(&mut sink) => if matches!(r, Ok(0) | Err(_)) { return; },
        }
    }
    let mut bye = BytesMut::new();
    let _ = encode_control(
        &mut bye,
        &Control::Disconnect {
            reason: "load test done".into(),
        },
    );
    let _ = timeout(Duration::from_secs(2), async {
        s.tls.write_all(&bye).await?;
        s.tls.shutdown().await
    })
    .await;
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Error texts with addresses and numbers folded, so failures group by kind.
fn reason_kind(e: &str) -> String {
    e.split(['(', '[']).next().unwrap_or(e).trim().to_string()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    ServerName::try_from(args.server_name.clone()).context("--server-name")?;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let configs = configs(&args)?;
    let rss_before = args.gateway_pid.and_then(rss_kib);

    let (phase_tx, phase_rx) = watch::channel(Phase::Handshake);
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, config) in configs.into_iter().enumerate() {
        tasks.spawn(run_session(
            i,
            args.clone(),
            config,
            gate.clone(),
            phase_rx.clone(),
            report_tx.clone(),
        ));
    }
    drop(report_tx);

    let mut established = 0usize;
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    while established + failures.values().sum::<usize>() < args.count {
        match reports.recv().await {
            Some(Report::Established) => established += 1,
            Some(Report::Failed(e)) => *failures.entry(reason_kind(&e)).or_default() += 1,
            Some(Report::Ping(_)) => {}
            None => break,
        }
    }
    let handshake_secs = started.elapsed().as_secs_f64();
    let rate = established as f64 / handshake_secs;

    let (mut pinged, mut ping_failures) = (0usize, BTreeMap::<String, usize>::new());
    if args.ping.is_some() {
        let _ = phase_tx.send(Phase::Ping);
        while pinged + ping_failures.values().sum::<usize>() < established {
            match reports.recv().await {
                Some(Report::Ping(Ok(()))) => pinged += 1,
                Some(Report::Ping(Err(e))) => {
                    *ping_failures.entry(reason_kind(&e)).or_default() += 1
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    let _ = phase_tx.send(Phase::Hold);
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let rss_idle = args.gateway_pid.and_then(rss_kib);
    let per_session = match (rss_before, rss_idle) {
        (Some(b), Some(a)) if established > 0 => {
            Some(a.saturating_sub(b) as f64 / established as f64)
        }
        _ => None,
    };
    let _ = phase_tx.send(Phase::Stop);
    let _ = timeout(Duration::from_secs(20), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;

    if args.json {
        println!(
            "{}",
            json!({
                "requested": args.count,
                "established": established,
                "failures": failures,
                "handshake_seconds": handshake_secs,
                "handshakes_per_second": rate,
                "concurrency": args.concurrency,
                "echo_replies": pinged,
                "echo_failures": ping_failures,
                "gateway_rss_kib_before": rss_before,
                "gateway_rss_kib_idle": rss_idle,
                "gateway_rss_kib_per_idle_session": per_session,
            })
        );
    } else {
        println!(
            "sessions:    {} requested, {established} established, {} failed",
            args.count,
            args.count - established
        );
        println!(
            "handshakes:  {rate:.0}/s ({established} in {handshake_secs:.2} s, {} in flight)",
            args.concurrency
        );
        for (why, n) in &failures {
            println!("  failed:    {n} x {why}");
        }
        if args.ping.is_some() {
            println!("traffic:     {pinged}/{established} echo replies received");
            for (why, n) in &ping_failures {
                println!("  lost:      {n} x {why}");
            }
        }
        if let (Some(b), Some(a), Some(p)) = (rss_before, rss_idle, per_session) {
            println!(
                "gateway RSS: {b} KiB before, {a} KiB with {established} idle sessions: {p:.1} KiB per session"
            );
        }
    }
    if established < args.count || pinged < established && args.ping.is_some() {
        std::process::exit(1);
    }
    Ok(())
}
