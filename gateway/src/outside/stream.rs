//! The shell of one cvpn/1 session over its TLS stream: reads the hello,
//! admits the client, pushes the configuration, then runs the two
//! directions until the client leaves, the session expires or it is
//! terminated.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use cvpn_pki::ClientIdentity;
use cvpn_proto::text::untrusted;
use cvpn_proto::{Control, encode_control};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep, timeout};
use tracing::{info, warn};

use super::Outside;
use super::udp::send_datagram;
use crate::endpoint::connlog::{Event, Record, new_connection_id};
use crate::endpoint::forward::reply_buffer;
use crate::endpoint::session::{Identity, Link, NewSession, Protocol, Session};
use crate::endpoint::{Endpoint, IDLE_TIMEOUT, MOVED};
use crate::protocol::cvpn::datagram::DatagramPath;
use crate::protocol::cvpn::outbox::Outbox;
use crate::protocol::cvpn::{self, Inbound};

pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for one maximal frame beyond what is buffered.
const READ_RESERVE: usize = cvpn_proto::HEADER_LEN + cvpn_proto::MAX_PACKET_FRAME;
/// Read buffers start small and grow while reads fill them: an idle
/// session holds a few KiB, a busy one reads up to BUSY_READ per call.
const IDLE_READ: usize = 4 * 1024;
const BUSY_READ: usize = 256 * 1024;
/// A session without traffic this long gives its buffers back.
const SHRINK_AFTER: Duration = Duration::from_secs(2);

/// How packets leave for a cvpn/1 client: on its datagram channel when
/// they can, else framed into its stream's outbox.
struct CvpnLink {
    outbox: Outbox,
    datagram: Option<(Arc<DatagramPath>, Arc<std::net::UdpSocket>)>,
    /// The client said it takes route changes while connected.
    live_routes: bool,
}

impl Link for CvpnLink {
    #[inline]
    fn send(&self, packet: &[u8]) -> bool {
        if let Some((path, sock)) = &self.datagram
            && send_datagram(sock, path, packet)
        {
            return true;
        }
        self.outbox.push_packet(packet)
    }

    fn update_routes(&self, routes: &[ipnet::Ipv4Net]) -> bool {
        if self.live_routes {
            self.outbox.push_control(&Control::Routes {
                routes: routes.to_vec(),
            });
        }
        self.live_routes
    }
}

/// Who connected, as the TLS handshake established.
pub struct Accepted {
    /// From the client's certificate.
    pub identity: ClientIdentity,
    /// The client's address and port.
    pub device: SocketAddr,
    /// When the connection was accepted.
    pub start: time::OffsetDateTime,
}

/// Logs a refused attempt and tells the client why.
pub async fn refuse<W: AsyncWrite + Unpin>(ep: &Endpoint, wr: &mut W, record: Record) {
    if let Event::Failed { reason } = &record.event {
        let mut buf = BytesMut::new();
        let _ = encode_control(
            &mut buf,
            &Control::Disconnect {
                reason: reason.clone(),
            },
        );
        let _ = timeout(Duration::from_secs(1), async {
            wr.write_all(&buf).await?;
            wr.shutdown().await
        })
        .await;
    }
    ep.log_refused(&record);
}

/// Reads until the hello is complete. Err: why the client is refused.
async fn read_hello<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<cvpn_proto::ClientHello, String> {
    loop {
        if let Some((h, n)) = cvpn::hello(buf)? {
            buf.advance(n);
            return Ok(h);
        }
        buf.reserve(IDLE_READ);
        match rd.read_buf(buf).await {
            Ok(0) => return Err("connection closed before hello".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Runs the session to its end and logs it.
pub async fn run<S>(out: Outside, stream: S, who: Accepted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let ep = &out.ep;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(IDLE_READ);
    let fail = |reason: String| Record {
        connection_id: new_connection_id(),
        common_name: Some(who.identity.common_name.clone()),
        client_ip: None,
        device: who.device,
        udp: false,
        start: who.start,
        event: Event::Failed { reason },
    };
    let hello = match timeout(HELLO_TIMEOUT, read_hello(&mut rd, &mut rbuf)).await {
        Ok(Ok(h)) => h,
        Ok(Err(why)) => return refuse(ep, &mut wr, fail(why)).await,
        Err(_) => return refuse(ep, &mut wr, fail("no hello within 10 s".into())).await,
    };
    let admitted = match ep.admit(&who.identity.common_name).await {
        Ok(a) => a,
        Err(why) => return refuse(ep, &mut wr, fail(why)).await,
    };
    // The datagram channel, if the client asks and the endpoint runs one.
    let udp = out.udp.as_ref().filter(|_| hello.datagram);
    // Under the admission lock: no other session takes the id before this
    // one is registered.
    let offered = udp.map(|u| {
        DatagramPath::offer(ep.config().listen.port(), |id| u.cvpn.contains(id))
            .map(|(path, offer)| (Arc::new(path), offer, u.clone()))
    });
    let (datagram, offer) = match offered {
        Some(Some((path, offer, u))) => (Some((path, u)), Some(offer)),
        Some(None) => {
            warn!("no randomness for datagram keys: this session uses its TLS stream only");
            (None, None)
        }
        None => (None, None),
    };
    let link = Arc::new(CvpnLink {
        outbox: Outbox::default(),
        datagram: datagram
            .as_ref()
            .map(|(path, u)| (path.clone(), u.socket.clone())),
        live_routes: hello.live_routes,
    });
    let session = Arc::new(Session::new(NewSession {
        identity: Identity {
            common_name: who.identity.common_name.clone(),
            serial: who.identity.serial.clone(),
            groups: who.identity.groups.clone(),
        },
        address: admitted.address,
        device: who.device,
        started: who.start,
        protocol: Protocol::Cvpn,
        udp: datagram.is_some(),
        link: link.clone(),
    }));
    if let Some((path, u)) = &datagram {
        u.cvpn.insert(path.clone(), &session);
    }
    ep.start(session.clone(), admitted);
    let groups: Vec<_> = who.identity.groups.iter().map(|g| untrusted(g)).collect();
    info!(
        connection_id = %session.connection_id, common_name = %untrusted(&session.common_name),
        groups = ?groups, client_ip = %session.address, device_ip = %who.device,
        os = %untrusted(&hello.os), software = %untrusted(&hello.client),
        datagram = session.udp, "client connected"
    );
    let push = ep.push_for(session.address, &session.common_name);
    link.outbox
        .push_control(&cvpn::config_message(push, &session.connection_id, offer));

    let reason = tokio::select! {
        r = client_to_gateway(ep, &mut rd, rbuf, &session) => r,
        r = gateway_to_client(&mut wr, &link.outbox, ep.keepalive()) => r,
        r = session.ended() => r,
        _ = tokio::time::sleep(ep.config().session_timeout) => "session timeout".into(),
    };
    link.outbox.close();
    if let Some((path, u)) = &datagram {
        u.cvpn.remove(path.session);
    }
    ep.end(&session);
    let mut bye = BytesMut::new();
    let goodbye = if reason == MOVED {
        // Elsewhere at once: this gateway is going away.
        Control::Reconnect {
            reason: reason.clone(),
        }
    } else {
        Control::Disconnect {
            reason: reason.clone(),
        }
    };
    let _ = encode_control(&mut bye, &goodbye);
    let _ = timeout(Duration::from_secs(1), async {
        wr.write_all(&bye).await?;
        wr.shutdown().await
    })
    .await;
    info!(connection_id = %session.connection_id, common_name = %untrusted(&session.common_name),
          reason = %untrusted(&reason), "session ended");
    ep.log(&session.record(Event::Ended {
        end: time::OffsetDateTime::now_utc(),
        reason,
        traffic: session.traffic(),
    }));
}

/// Reads frames from the client and hands every packet to the endpoint's
/// policy. Returns why the session ends.
async fn client_to_gateway<R: AsyncRead + Unpin>(
    ep: &Endpoint,
    rd: &mut R,
    mut buf: BytesMut,
    session: &Session,
) -> String {
    let mut reply = reply_buffer();
    let mut want = IDLE_READ;
    let idle = tokio::time::sleep(SHRINK_AFTER);
    tokio::pin!(idle);
    loop {
        let policy = ep.policy.load();
        let mut pos = 0;
        let mut forwarded = false;
        loop {
            match cvpn::next_inbound(&buf[pos..]) {
                Ok(Some((Inbound::Packet(p), n))) => {
                    ep.forward(session, &policy, p, &mut reply);
                    forwarded = true;
                    pos += n;
                }
                Ok(Some((Inbound::Keepalive, n))) => pos += n,
                Ok(None) => break,
                Err(reason) => return reason,
            }
        }
        if forwarded {
            ep.after_forwarding();
        }
        buf.advance(pos);
        if let Err(reason) = read_more(rd, &mut buf, &mut want, &mut idle).await {
            return reason;
        }
    }
}

/// Reads at least one byte into `buf`, sizing it to the traffic: `want`
/// doubles while reads fill it, and an idle session drops back to a small
/// buffer. `idle` is the session's idle timer, pushed back on each call
/// (cheap for a timer already armed, unlike a timer per read). Err: why
/// the session ends.
async fn read_more<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    want: &mut usize,
    idle: &mut Pin<&mut Sleep>,
) -> Result<(), String> {
    let mut quiet = Duration::ZERO;
    loop {
        // A partial frame needs room for the rest of it at least.
        let need = (*want).max(if buf.is_empty() { 0 } else { READ_RESERVE });
        if buf.capacity() - buf.len() < need {
            buf.reserve(need);
        }
        let room = buf.capacity() - buf.len();
        idle.as_mut().reset(Instant::now() + SHRINK_AFTER);
        tokio::select! {
            r = rd.read_buf(buf) => match r {
                Ok(0) => return Err("client closed the connection".into()),
                Ok(n) => {
                    if n >= room / 2 {
                        *want = (*want * 2).min(BUSY_READ);
                    }
                    return Ok(());
                }
                Err(e) => return Err(format!("read failed: {e}")),
            },
            _ = idle.as_mut() => {
                quiet += SHRINK_AFTER;
                if quiet >= IDLE_TIMEOUT {
                    return Err("client silent past the keepalive timeout".into());
                }
                if buf.is_empty() && buf.capacity() > IDLE_READ {
                    *buf = BytesMut::new();
                    *want = IDLE_READ;
                }
            }
        }
    }
}

/// Writes whatever the outbox holds, batched; a keepalive when idle, and
/// then the buffers go back to the allocator.
async fn gateway_to_client<W: AsyncWrite + Unpin>(
    wr: &mut W,
    outbox: &Outbox,
    keepalive: Duration,
) -> String {
    let mut spare = BytesMut::new();
    // One timer for the session, pushed back after each batch.
    let idle = tokio::time::sleep(keepalive);
    tokio::pin!(idle);
    loop {
        idle.as_mut().reset(Instant::now() + keepalive);
        tokio::select! {
            _ = outbox.take(&mut spare) => {}
            _ = idle.as_mut() => {
                outbox.shrink_if_empty();
                spare = BytesMut::new();
                let _ = encode_control(&mut spare, &Control::Keepalive);
            }
        }
        if let Err(e) = wr.write_all(&spare).await {
            return format!("write failed: {e}");
        }
        if let Err(e) = wr.flush().await {
            return format!("write failed: {e}");
        }
        spare.clear();
    }
}
