//! The client's side of the datagram channel (`proto udp`): a UDP socket
//! to the endpoint, probed until the endpoint answers and then every
//! PROBE_EVERY. Small packets take it while it answers; everything else,
//! and everything while it does not, takes the TLS stream.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cvpn_proto::datagram::{
    self, DatagramOffer, KIND_PACKET, KIND_PROBE, MAX_DATAGRAM, OVERHEAD, Opener, Sealer,
};
use cvpn_tundev::TunDevice;
use tokio::net::UdpSocket;
use tracing::{debug, info};

/// Probes while the path is up; the endpoint answers each one.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Probes while it is not (yet) up.
const PROBE_DOWN: Duration = Duration::from_secs(1);
/// No authentic datagram for this long: the path is down.
const PATH_TIMEOUT: Duration = Duration::from_secs(12);

pub struct Channel {
    sock: UdpSocket,
    sealer: Mutex<Sealer>,
    opener: Mutex<Opener>,
    heard: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Channel {
    /// A socket to the endpoint's datagram port, at the address the TLS
    /// stream reached.
    /// The offer's keys are consumed: a channel opened again needs a new
    /// offer (a new session), so no counter ever restarts under a key.
    pub async fn open(endpoint: SocketAddr, offer: DatagramOffer) -> Result<Channel> {
        let to = SocketAddr::new(endpoint.ip(), offer.port);
        let any: SocketAddr = if to.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(any).await.context("binding a UDP socket")?;
        sock.connect(to)
            .await
            .with_context(|| format!("UDP to {to}"))?;
        Ok(Channel {
            sock,
            sealer: Mutex::new(Sealer::new(offer.to_gateway, offer.session)),
            opener: Mutex::new(Opener::new(offer.to_client, offer.session)),
            heard: Mutex::new(None),
        })
    }

    fn up(&self, now: Instant) -> bool {
        lock(&self.heard).is_some_and(|t| now.saturating_duration_since(t) < PATH_TIMEOUT)
    }

    /// Sends one packet (virtio-net header and IP packet) as a datagram;
    /// false if it must take the TLS stream instead.
    pub fn try_send_packet(&self, payload: &[u8]) -> bool {
        if !datagram::fits(payload) || !self.up(Instant::now()) {
            return false;
        }
        let mut out = [0u8; MAX_DATAGRAM];
        match lock(&self.sealer).seal(KIND_PACKET, payload, &mut out) {
            Ok(n) => self.sock.try_send(&out[..n]).is_ok(),
            Err(_) => false,
        }
    }

    fn probe(&self) {
        let mut out = [0u8; OVERHEAD];
        if let Ok(n) = lock(&self.sealer).seal(KIND_PROBE, &[], &mut out) {
            // Lost probes are what the timeout is for.
            let _ = self.sock.try_send(&out[..n]);
        }
    }

    /// Receives datagrams into the tun device and probes the path; runs
    /// until the session ends (it never ends the session itself).
    pub async fn run(&self, tun: &TunDevice) -> Result<String> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut was_up = false;
        let tick = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                r = self.sock.recv(&mut buf) => {
                    // Errors are ICMP reports of earlier sends (port
                    // unreachable while the endpoint restarts, ...).
                    let Ok(n) = r else { continue };
                    let opened = lock(&self.opener).open(&mut buf[..n]);
                    let (kind, payload) = match opened {
                        Ok(o) => (o.kind, o.payload),
                        Err(e) => {
                            debug!("datagram dropped: {e}");
                            continue;
                        }
                    };
                    *lock(&self.heard) = Some(Instant::now());
                    if kind == KIND_PACKET
                        && let Err(e) = tun.send(payload).await
                    {
                        debug!("tun write: {e}");
                    }
                }
                _ = tick.as_mut() => {
                    self.probe();
                    let up = self.up(Instant::now());
                    if up != was_up {
                        info!(up, "datagram path {}", if up { "up" } else { "down: using the TLS stream" });
                        was_up = up;
                    }
                    let next = if up { PROBE_EVERY } else { PROBE_DOWN };
                    tick.as_mut().reset(tokio::time::Instant::now() + next);
                }
            }
        }
    }
}
