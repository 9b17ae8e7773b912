//! The driver of one OpenVPN client: runs its control channel (packets
//! from the shell in, packets to its wire out, timers), admits it into
//! the endpoint once authenticated, pushes its configuration, installs
//! its data keys, pings it, and ends its session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cvpn_proto::text::untrusted;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, sleep_until};
use tracing::info;

use super::{Client, OpenVpnLink, Wrapping};
use crate::endpoint::connlog::{Event as LogEvent, Record, new_connection_id};
use crate::endpoint::session::{Identity, NewSession, Protocol, Session};
use crate::endpoint::{DRAINING, Endpoint, IDLE_TIMEOUT, MOVED};
use crate::protocol::openvpn::control::{Control, Event, HAND_WINDOW, TlsFactory};
use crate::protocol::openvpn::data::PING;
use crate::protocol::openvpn::keys::{PeerInfo, iv_proto};
use crate::protocol::openvpn::packet::ControlPacket;
use crate::protocol::openvpn::push::{self, Negotiated};

/// A client must be authenticated within this: OpenVPN's hand-window,
/// time enough for a smartcard PIN or a key-store prompt. The client
/// holds one of the endpoint's handshake slots meanwhile.
pub const AUTH_TIMEOUT: Duration = HAND_WINDOW;
/// How long a leaving session waits for its last message to be taken.
const LINGER: Duration = Duration::from_millis(500);
/// How long a refused client's AUTH_FAILED is sent again (over UDP)
/// until the client acknowledges it.
const REFUSAL_LINGER: Duration = Duration::from_secs(15);
/// What a refusal a retry can fix tells clients to wait before they try
/// again, in seconds.
const TEMP_BACKOFF: u32 = 10;

/// The TLS configurations of a client's key ids: the endpoint's current.
pub fn tls_factory(ep: &Arc<Endpoint>) -> TlsFactory {
    let ep = ep.clone();
    Box::new(move || ep.tls.load().for_openvpn().map_err(|e| e.to_string()))
}

/// Where a client came from and when.
pub struct Start {
    /// Its address and port.
    pub device: SocketAddr,
    /// When its first packet came.
    pub started: time::OffsetDateTime,
    /// Over UDP (else TCP).
    pub udp: bool,
    /// Its slot among the handshakes in progress, until authenticated.
    pub permit: Option<OwnedSemaphorePermit>,
    /// Its tls-crypt wrapping, if the endpoint has a key.
    pub wrapping: Option<Wrapping>,
    /// What the shell does once the client is admitted (UDP: the client
    /// takes its address over from any session there before).
    pub on_admit: Option<Box<dyn FnOnce() + Send + Sync>>,
}

/// Drives a client until its session ends; returns why.
pub async fn drive(
    ep: Arc<Endpoint>,
    client: Arc<Client>,
    mut control: Control,
    mut inbound: mpsc::Receiver<Vec<u8>>,
    mut start: Start,
) {
    let auth_deadline = Instant::now() + AUTH_TIMEOUT;
    control.set_reneg(Some(ep.config().tls.reneg));
    let mut run = Run {
        ep: &ep,
        client: &client,
        negotiated: None,
        last_ping: Instant::now(),
        wrapping: start.wrapping.take(),
    };
    let reason = loop {
        run.flush(&mut control);
        let session = client.session.get().cloned();
        let now = Instant::now();
        let tick = control
            .next_timeout()
            .map(Instant::from_std)
            .unwrap_or(now + ep.keepalive())
            .min(now + Duration::from_secs(1));
        let deadline = match &session {
            Some(s) => session_deadline(&ep, s),
            None => auth_deadline,
        };
        let ended = async {
            match &session {
                Some(s) => s.ended().await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            m = inbound.recv() => match m {
                Some(bytes) => run.receive(&mut control, bytes),
                None => Err("client closed the connection".to_string()),
            },
            _ = sleep_until(tick) => run.timers(&mut control),
            r = ended => Err(r),
            r = client.stopped() => Err(r),
            _ = client.data.worn() => run.timers(&mut control),
            _ = sleep_until(deadline) => Err(match session {
                Some(_) => "session timeout".to_string(),
                None => format!("not authenticated within {} s", AUTH_TIMEOUT.as_secs()),
            }),
        };
        if let Err(reason) = step {
            break reason;
        }
        if let Err(reason) = run.events(&mut control, &mut start).await {
            break reason;
        }
    };
    run.finish(&mut control, &mut inbound, &start, reason).await;
}

fn session_deadline(ep: &Endpoint, s: &Session) -> Instant {
    let age = time::OffsetDateTime::now_utc() - s.started;
    let left = ep
        .config()
        .session_timeout
        .saturating_sub(age.try_into().unwrap_or_default());
    Instant::now() + left
}

struct Run<'a> {
    ep: &'a Arc<Endpoint>,
    client: &'a Arc<Client>,
    negotiated: Option<Negotiated>,
    last_ping: Instant,
    wrapping: Option<Wrapping>,
}

impl Run<'_> {
    /// Sends what the control channel has due.
    fn flush(&mut self, control: &mut Control) {
        let now = std::time::Instant::now();
        while let Some(p) = control.poll_transmit(now) {
            match &mut self.wrapping {
                Some(w) => self.client.wire.send(&w.wrap(&p)),
                None => self.client.wire.send(&p),
            };
        }
    }

    /// One control packet from the client: unwrapped, then to the
    /// control channel. Packets that are not the client's are ignored.
    fn receive(&mut self, control: &mut Control, bytes: Vec<u8>) -> Result<(), String> {
        let plain = match &mut self.wrapping {
            Some(w) => match w.unwrap(&bytes) {
                Some(p) => p,
                None => return Ok(()),
            },
            None => bytes,
        };
        let Ok(p) = ControlPacket::parse(&plain) else {
            return Ok(());
        };
        // Only the session's own packets keep it alive: a stranger that
        // knows the address must not hold its slot.
        if control.receive(&p, std::time::Instant::now())? {
            self.client.heard();
        }
        Ok(())
    }

    /// Control-channel timers, the keepalive ping, the idle timeout.
    fn timers(&mut self, control: &mut Control) -> Result<(), String> {
        let now = std::time::Instant::now();
        control.client_sends_with(self.client.data.client_key());
        control.on_timeout(now)?;
        if self.client.data.worn_out() {
            control.renegotiate(now)?;
        }
        if self.client.session.get().is_some() {
            if self.client.last_heard().elapsed() >= IDLE_TIMEOUT {
                return Err("client silent past the keepalive timeout".into());
            }
            if self.last_ping.elapsed() >= self.ep.keepalive() {
                self.last_ping = Instant::now();
                let mut out = [0u8; 64];
                if let Ok(n) = self.client.data.seal(&PING, &mut out) {
                    self.client.wire.send(&out[..n]);
                }
            }
        }
        Ok(())
    }

    /// Acts on what the control channel reported.
    async fn events(&mut self, control: &mut Control, start: &mut Start) -> Result<(), String> {
        // Pushed after the batch: the client sends data as soon as it has
        // its configuration, so the keys must be in place first.
        let mut push = false;
        while let Some(ev) = control.poll_event() {
            match ev {
                Event::Authenticated {
                    identity,
                    peer_info,
                    cipher,
                    tls_ekm,
                } => {
                    start.permit = None;
                    self.client
                        .data
                        .use_data_v2(peer_info.has(iv_proto::DATA_V2));
                    self.negotiated = Some(Negotiated {
                        cipher,
                        tls_ekm,
                        cc_exit: peer_info.has(iv_proto::CC_EXIT_NOTIFY),
                        peer_id: peer_info
                            .has(iv_proto::DATA_V2)
                            .then_some(self.client.peer_id),
                    });
                    self.admit(control, start, identity, &peer_info).await?;
                    if let Some(f) = start.on_admit.take() {
                        f();
                    }
                    push |= peer_info.has(iv_proto::REQUEST_PUSH);
                }
                Event::Keys {
                    key_id,
                    cipher,
                    keys,
                } => {
                    self.client.data.install(key_id, cipher, &keys);
                    // The first key: the client has it before its first
                    // packet (it comes with the configuration).
                    if self.client.data.active_key().is_none() {
                        self.client.data.activate(key_id);
                    }
                }
                Event::Active { key_id } => self.client.data.activate(key_id),
                Event::Retired { key_id } => self.client.data.retire(key_id),
                Event::Refused { identity, reason } => {
                    start.permit = None;
                    let _ = control.send_message(&format!("AUTH_FAILED,{reason}"));
                    self.ep
                        .log_refused(&failure(start, Some(identity.common_name), &reason));
                    return Err(format!("refused: {reason}"));
                }
                Event::PushRequest => push = true,
                Event::Exit => return Err("client disconnected".into()),
            }
        }
        if push {
            self.push(control)?;
        }
        Ok(())
    }

    async fn admit(
        &mut self,
        control: &mut Control,
        start: &Start,
        identity: cvpn_pki::ClientIdentity,
        peer_info: &crate::protocol::openvpn::keys::PeerInfo,
    ) -> Result<(), String> {
        let ep = self.ep;
        let admitted = match ep.admit(&identity.common_name).await {
            Ok(a) => a,
            Err(why) => {
                // Both of admission's refusals (max_connections, the pool
                // exhausted) are ones a retry can get past.
                let _ = control.send_message(&auth_failed_temp(peer_info, &why));
                ep.log_refused(&failure(start, Some(identity.common_name), &why));
                return Err(format!("refused: {why}"));
            }
        };
        let session = Arc::new(Session::new(NewSession {
            identity: Identity {
                common_name: identity.common_name.clone(),
                serial: identity.serial.clone(),
                groups: identity.groups.clone(),
            },
            address: admitted.address,
            device: start.device,
            started: start.started,
            protocol: Protocol::OpenVpn,
            udp: start.udp,
            link: Arc::new(OpenVpnLink {
                data: self.client.data.clone(),
                wire: self.client.wire.clone(),
            }),
        }));
        let _ = self.client.session.set(session.clone());
        ep.start(session.clone(), admitted);
        let groups: Vec<_> = identity.groups.iter().map(|g| untrusted(g)).collect();
        let software = peer_info.gui.as_deref().or(peer_info.version.as_deref());
        info!(
            connection_id = %session.connection_id, common_name = %untrusted(&session.common_name),
            groups = ?groups, client_ip = %session.address, device_ip = %start.device,
            os = %untrusted(peer_info.platform.as_deref().unwrap_or("NA")),
            software = %untrusted(software.unwrap_or("NA")),
            protocol = "openvpn", udp = start.udp, "client connected"
        );
        Ok(())
    }

    fn push(&mut self, control: &mut Control) -> Result<(), String> {
        let (Some(s), Some(n)) = (self.client.session.get(), &self.negotiated) else {
            return Ok(());
        };
        let options = push::options(
            &self.ep.push_for(s.address, &s.common_name),
            n,
            self.ep.ping_restart(),
        );
        for m in push::messages(&options) {
            control.send_message(&m)?;
        }
        Ok(())
    }

    /// Tells the client why it must go (when it did not leave itself),
    /// gives the message a moment, and logs the end. A refused client's
    /// AUTH_FAILED is sent until it is acknowledged.
    async fn finish(
        &mut self,
        control: &mut Control,
        inbound: &mut mpsc::Receiver<Vec<u8>>,
        start: &Start,
        reason: String,
    ) {
        let ep = self.ep;
        let Some(session) = self.client.session.get().cloned() else {
            if reason.starts_with("refused: ") {
                self.linger(control, inbound, REFUSAL_LINGER).await;
                return;
            }
            match control.presented() {
                _ if crate::tls::is_version_mismatch(&reason) => {
                    let why = format!(
                        "tls_version: the client offers no TLS version from {} up ({reason})",
                        ep.config().tls.min_version
                    );
                    ep.log_refused(&failure(start, None, &why));
                }
                Some(p) => ep.log_refused(&failure(start, p.common_name, &reason)),
                None => ep.failed_without_certificate(start.device, &reason),
            }
            self.flush(control);
            return;
        };
        // Out of the registry first: nothing is sent to it meanwhile.
        ep.end(&session);
        if let Some(message) = goodbye(&reason) {
            let _ = control.send_message(&message);
            self.linger(control, inbound, LINGER).await;
        }
        info!(connection_id = %session.connection_id, common_name = %untrusted(&session.common_name),
              reason = %untrusted(&reason), "session ended");
        ep.log(&session.record(LogEvent::Ended {
            end: time::OffsetDateTime::now_utc(),
            reason,
            traffic: session.traffic(),
        }));
    }

    /// Sends what is queued, again when due, and takes the client's
    /// acknowledgements, until all is acknowledged or `at_most` passed.
    async fn linger(
        &mut self,
        control: &mut Control,
        inbound: &mut mpsc::Receiver<Vec<u8>>,
        at_most: Duration,
    ) {
        let until = Instant::now() + at_most;
        loop {
            self.flush(control);
            if control.all_acknowledged() {
                return;
            }
            let tick = control
                .next_timeout()
                .map(Instant::from_std)
                .unwrap_or(until)
                .min(until);
            tokio::select! {
                m = inbound.recv() => match m {
                    Some(b) => {
                        if self.receive(control, b).is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                _ = sleep_until(tick) => {
                    if Instant::now() >= until
                        || control.on_timeout(std::time::Instant::now()).is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// AUTH_FAILED for a refusal that a retry can get past: `TEMP` with a
/// backoff (short when the gateway drains) and the flag to try the next
/// remote first (another gateway of a cluster may have room), for
/// clients that take it; the plain one for others.
fn auth_failed_temp(peer_info: &PeerInfo, why: &str) -> String {
    let backoff = if why == DRAINING { 1 } else { TEMP_BACKOFF };
    if peer_info.has(iv_proto::AUTH_FAIL_TEMP) {
        format!("AUTH_FAILED,TEMP[backoff {backoff},advance remote]:{why}")
    } else {
        format!("AUTH_FAILED,{why}")
    }
}

/// What the client is told when the endpoint ends its session: HALT
/// (stop) where reconnecting would only be refused or fight another
/// session; RESTART with the flag to advance to the next remote when the
/// gateway drains; RESTART (reconnect) otherwise; nothing if it left
/// itself.
fn goodbye(reason: &str) -> Option<String> {
    let signal = match reason {
        "client disconnected" | "client closed the connection" => return None,
        "client silent past the keepalive timeout" => return None,
        "terminated by the administrator"
        | "certificate revoked"
        | "replaced by a new session of the same identity" => "HALT",
        MOVED => return Some(format!("RESTART,[N]:{reason}")),
        _ => "RESTART",
    };
    Some(format!("{signal},{reason}"))
}

fn failure(start: &Start, common_name: Option<String>, reason: &str) -> Record {
    Record {
        connection_id: new_connection_id(),
        common_name,
        client_ip: None,
        device: start.device,
        udp: start.udp,
        start: start.started,
        event: LogEvent::Failed {
            reason: reason.to_string(),
        },
    }
}
