//! One client connection, after the TLS handshake: hello, address, pushed
//! configuration, then the two directions of the data path until the
//! client leaves, the session expires or it is terminated.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use cvpn_gw::config::RouteTarget;
use cvpn_gw::connlog::{Event, Record, new_connection_id};
use cvpn_gw::datagram::DatagramPath;
use cvpn_gw::dataplane::{Counters, Outbox, SessionHandle};
use cvpn_gw::icmp::{self, Unreachable};
use cvpn_gw::policy::{Policy, Verdict};
use cvpn_pki::ClientIdentity;
use cvpn_proto::datagram::DatagramOffer;
use cvpn_proto::text::{truncate_chars, untrusted};
use cvpn_proto::{
    Control, EndpointConfig, Frame, PROTOCOL_VERSION, VNET_HDR_LEN, decode, encode_control, vnet,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep, timeout};
use tracing::{debug, info, warn};

use crate::datapath;
use crate::serve::Gateway;

pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// A client silent for this long is gone (it sends keepalives every KEEPALIVE).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(35);
pub const TUNNEL_MTU: u16 = 1500;
/// Room for one maximal frame beyond what is buffered.
const READ_RESERVE: usize = cvpn_proto::HEADER_LEN + cvpn_proto::MAX_PACKET_FRAME;
/// Read buffers start small and grow while reads fill them: an idle
/// session holds a few KiB, a busy one reads up to BUSY_READ per call.
const IDLE_READ: usize = 4 * 1024;
const BUSY_READ: usize = 256 * 1024;
/// How much of a reason a peer wrote is kept for the connection log.
pub const MAX_REASON_CHARS: usize = 200;
/// A session without traffic this long gives its buffers back.
const SHRINK_AFTER: Duration = Duration::from_secs(2);

/// Reads until one control frame is complete; packets before it are a
/// protocol error.
async fn read_control<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<Control, String> {
    loop {
        match decode(buf) {
            Ok(Some((Frame::Control(c), n))) => {
                let msg = Control::parse(c).map_err(|e| e.to_string());
                buf.advance(n);
                return msg;
            }
            Ok(Some((Frame::Packet(_), _))) => return Err("packet before hello".into()),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        buf.reserve(IDLE_READ);
        match rd.read_buf(buf).await {
            Ok(0) => return Err("connection closed before hello".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

pub struct Admitted {
    pub identity: ClientIdentity,
    pub device: SocketAddr,
    pub start: time::OffsetDateTime,
}

/// Runs the session to its end and logs it.
pub async fn run<S>(gw: Arc<Gateway>, stream: S, who: Admitted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(IDLE_READ);
    let fail = |reason: String| Record {
        connection_id: new_connection_id(),
        common_name: Some(who.identity.common_name.clone()),
        client_ip: None,
        device: who.device,
        datagram: false,
        start: who.start,
        event: Event::Failed { reason },
    };
    let hello = match timeout(HELLO_TIMEOUT, read_control(&mut rd, &mut rbuf)).await {
        Ok(Ok(Control::Hello(h))) => h,
        Ok(Ok(other)) => {
            let what = format!("{other:?}");
            let why = format!(
                "expected hello, got {}",
                truncate_chars(&what, MAX_REASON_CHARS)
            );
            return gw.refuse(&mut wr, fail(why)).await;
        }
        Ok(Err(e)) => {
            let why = format!("bad hello: {}", truncate_chars(&e, MAX_REASON_CHARS));
            return gw.refuse(&mut wr, fail(why)).await;
        }
        Err(_) => {
            return gw
                .refuse(&mut wr, fail("no hello within 10 s".into()))
                .await;
        }
    };
    if hello.version != PROTOCOL_VERSION {
        let why = format!(
            "unsupported protocol version {} (this endpoint speaks {PROTOCOL_VERSION})",
            hello.version
        );
        return gw.refuse(&mut wr, fail(why)).await;
    }
    let (address, admitted) = match gw.admit(&who.identity.common_name).await {
        Ok(a) => a,
        Err(why) => return gw.refuse(&mut wr, fail(why)).await,
    };
    // The datagram channel, if the client asks and the endpoint runs one.
    let (datagram, offer) = match (&gw.udp, hello.datagram) {
        // Under the admission lock: no other session takes the id before
        // this one is registered.
        (Some(_), true) => match DatagramPath::offer(gw.config.listen.port(), |id| {
            gw.registry.by_datagram(id).is_some()
        }) {
            Some((path, offer)) => (Some(path), Some(offer)),
            None => {
                warn!("no randomness for datagram keys: this session uses its TLS stream only");
                (None, None)
            }
        },
        _ => (None, None),
    };
    let handle = Arc::new(SessionHandle {
        connection_id: new_connection_id(),
        common_name: who.identity.common_name.clone(),
        serial: who.identity.serial.clone(),
        address,
        device: who.device,
        started: who.start,
        outbox: Outbox::default(),
        counters: Counters::default(),
        groups: gw.policy.load().group_mask(&who.identity.groups),
        datagram,
        end: tokio::sync::Notify::new(),
        end_reason: std::sync::Mutex::new(None),
    });
    gw.registry.insert(handle.clone());
    drop(admitted);
    gw.log(&handle.record(Event::Connected));
    let groups: Vec<_> = who.identity.groups.iter().map(|g| untrusted(g)).collect();
    info!(
        connection_id = %handle.connection_id, common_name = %untrusted(&handle.common_name),
        groups = ?groups, client_ip = %address, device_ip = %who.device,
        os = %untrusted(&hello.os), software = %untrusted(&hello.client),
        datagram = handle.datagram.is_some(), "client connected"
    );
    handle
        .outbox
        .push_control(&Control::Config(gw.endpoint_config(
            address,
            &handle.connection_id,
            offer,
        )));

    let reason = tokio::select! {
        r = client_to_gateway(&gw, &mut rd, rbuf, &handle) => r,
        r = gateway_to_client(&mut wr, &handle.outbox) => r,
        _ = handle.end.notified() => handle.reason().unwrap_or_else(|| "terminated".into()),
        _ = tokio::time::sleep(gw.config.session_timeout) => "session timeout".into(),
    };
    handle.outbox.close();
    gw.end_session(address);
    let mut bye = BytesMut::new();
    let _ = encode_control(
        &mut bye,
        &Control::Disconnect {
            reason: reason.clone(),
        },
    );
    let _ = timeout(Duration::from_secs(1), async {
        wr.write_all(&bye).await?;
        wr.shutdown().await
    })
    .await;
    info!(connection_id = %handle.connection_id, common_name = %untrusted(&handle.common_name),
          reason = %untrusted(&reason), "session ended");
    gw.log(&handle.record(Event::Ended {
        end: time::OffsetDateTime::now_utc(),
        reason,
        traffic: handle.traffic(),
    }));
}

/// Reads frames from the client and applies the policy to every packet.
/// Returns why the session ends.
async fn client_to_gateway<R: AsyncRead + Unpin>(
    gw: &Gateway,
    rd: &mut R,
    mut buf: BytesMut,
    handle: &SessionHandle,
) -> String {
    let mut reply: Reply = [0u8; VNET_HDR_LEN + icmp::MAX_REPLY];
    let mut want = IDLE_READ;
    let idle = tokio::time::sleep(SHRINK_AFTER);
    tokio::pin!(idle);
    loop {
        let policy = gw.policy.load();
        let mut pos = 0;
        let mut forwarded = false;
        loop {
            let (frame, n) = match decode(&buf[pos..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return format!("malformed frame from client: {e}"),
            };
            pos += n;
            let payload = match frame {
                Frame::Packet(p) => p,
                Frame::Control(c) => match Control::parse(c) {
                    Ok(Control::Keepalive) => continue,
                    Ok(Control::Disconnect { reason }) => {
                        // Kept for the connection log, which escapes it.
                        return format!(
                            "client disconnected: {}",
                            truncate_chars(&reason, MAX_REASON_CHARS)
                        );
                    }
                    Ok(other) => {
                        let what = format!("{other:?}");
                        return format!(
                            "protocol error: unexpected {}",
                            truncate_chars(&what, MAX_REASON_CHARS)
                        );
                    }
                    Err(e) => {
                        let why = e.to_string();
                        return format!(
                            "protocol error: {}",
                            truncate_chars(&why, MAX_REASON_CHARS)
                        );
                    }
                },
            };
            forward(gw, handle, &policy, payload, &mut reply);
            forwarded = true;
        }
        if forwarded {
            datapath::take_replies(gw);
        }
        buf.advance(pos);
        match read_more(rd, &mut buf, &mut want, &mut idle).await {
            Ok(()) => {}
            Err(reason) => return reason,
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

/// Applies the policy to one packet frame from the client (virtio-net
/// header and IP packet) and sends it on, or answers it with ICMP.
pub fn forward(
    gw: &Gateway,
    handle: &SessionHandle,
    policy: &Policy,
    payload: &[u8],
    reply: &mut Reply,
) {
    let Some((hdr, packet)) = vnet::split(payload) else {
        gw.drops.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let c = &handle.counters;
    Counters::add(&c.ingress_bytes, &c.ingress_packets, packet.len());
    let unreachable = match policy.check(packet, handle.address, handle.groups) {
        // A segmentation-offload packet is many segments behind one IP
        // header: the addresses judged are those of every segment.
        Verdict::Forward(_) if !hdr.is_sane(packet) => {
            gw.drops.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Verdict::Forward(RouteTarget::Network(_)) => {
            if let Err(e) = gw.tun.write(payload) {
                debug!(error = %e, "tun write failed");
            }
            return;
        }
        Verdict::Forward(RouteTarget::Local) => {
            return gw.deliver(payload);
        }
        Verdict::NoRoute => {
            gw.drops.no_route.fetch_add(1, Ordering::Relaxed);
            Unreachable::Net
        }
        Verdict::Denied => {
            gw.drops.denied.fetch_add(1, Ordering::Relaxed);
            Unreachable::AdminProhibited
        }
        Verdict::Spoofed => {
            if gw
                .drops
                .spoofed
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(1000)
            {
                warn!(connection_id = %handle.connection_id, common_name = %untrusted(&handle.common_name),
                      "dropped a packet with a forged source address");
            }
            return;
        }
        Verdict::Malformed => {
            gw.drops.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    // The reply goes behind a plain virtio-net header (the buffer's first
    // bytes, always zero).
    let (_, body) = reply.split_at_mut(VNET_HDR_LEN);
    let Ok(body) = <&mut [u8; icmp::MAX_REPLY]>::try_from(body) else {
        return;
    };
    if let Some(n) = icmp::unreachable(body, packet, gw.gateway_addr, unreachable) {
        handle.outbox.push_packet(&reply[..VNET_HDR_LEN + n]);
    }
}

/// Room for an ICMP error behind a virtio-net header.
pub type Reply = [u8; VNET_HDR_LEN + icmp::MAX_REPLY];

/// Writes whatever the outbox holds, batched; a keepalive when idle, and
/// then the buffers go back to the allocator.
async fn gateway_to_client<W: AsyncWrite + Unpin>(wr: &mut W, outbox: &Outbox) -> String {
    let mut spare = BytesMut::new();
    // One timer for the session, pushed back after each batch.
    let idle = tokio::time::sleep(KEEPALIVE);
    tokio::pin!(idle);
    loop {
        idle.as_mut().reset(Instant::now() + KEEPALIVE);
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

impl Gateway {
    pub fn endpoint_config(
        &self,
        address: Ipv4Addr,
        connection_id: &str,
        datagram: Option<DatagramOffer>,
    ) -> EndpointConfig {
        let routes = if self.config.split_tunnel {
            self.config.routes.iter().map(|r| r.destination).collect()
        } else {
            Vec::new()
        };
        EndpointConfig {
            address,
            prefix_len: self.config.client_cidr.prefix_len(),
            routes,
            full_tunnel: !self.config.split_tunnel,
            dns_servers: self.config.dns_servers.clone(),
            mtu: TUNNEL_MTU,
            banner: self.config.banner.clone(),
            keepalive_secs: KEEPALIVE.as_secs() as u32,
            session_expires_in_secs: self.config.session_timeout.as_secs(),
            connection_id: connection_id.to_string(),
            datagram,
        }
    }
}
