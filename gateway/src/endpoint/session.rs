//! A session: one authenticated client with an address, whatever wire
//! protocol it speaks. The protocol's shell gives it a [`Link`], the way
//! packets for the client leave; everything else here (identity, groups,
//! counters, terminate) is the same for every protocol.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::connlog::{Event, Record, Traffic};
use crate::policy::{GroupMask, Policy};

/// How packets for one client leave the gateway: framed into its stream,
/// sealed into a datagram, whatever its protocol does. Called from the
/// packet thread and from other sessions' tasks, so it must not block.
pub trait Link: Send + Sync {
    /// Sends or queues one packet for the client: a virtio-net header and
    /// an IPv4 packet (possibly a segmentation-offload train). False: it
    /// was dropped (queue full, session closing).
    fn send(&self, packet: &[u8]) -> bool;

    /// Tells the client its new split-tunnel routes, if its protocol and
    /// software take them while connected. False: it keeps the old ones
    /// until it reconnects.
    fn update_routes(&self, _routes: &[ipnet::Ipv4Net]) -> bool {
        false
    }
}

/// The wire protocol a session speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// cvpn-client's own protocol.
    Cvpn,
    /// The OpenVPN protocol (stock OpenVPN clients).
    OpenVpn,
}

impl Protocol {
    /// The name used in logs, the admin socket and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Cvpn => "cvpn",
            Protocol::OpenVpn => "openvpn",
        }
    }
}

/// Byte and packet counters of one session, named from the gateway's side
/// as the managed service's connection log names them: ingress is from the
/// client, egress is to the client.
#[derive(Default)]
pub struct Counters {
    /// Bytes of IP packets from the client.
    pub ingress_bytes: AtomicU64,
    /// IP packets from the client.
    pub ingress_packets: AtomicU64,
    /// Bytes of IP packets to the client.
    pub egress_bytes: AtomicU64,
    /// IP packets to the client.
    pub egress_packets: AtomicU64,
}

impl Counters {
    /// Counts one packet of `bytes` into a byte and a packet counter.
    pub fn add(counter_bytes: &AtomicU64, counter_packets: &AtomicU64, bytes: usize) {
        counter_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        counter_packets.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters' values now.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            ingress_bytes: self.ingress_bytes.load(Ordering::Relaxed),
            egress_bytes: self.egress_bytes.load(Ordering::Relaxed),
            ingress_packets: self.ingress_packets.load(Ordering::Relaxed),
            egress_packets: self.egress_packets.load(Ordering::Relaxed),
        }
    }
}

/// Who a session is and where it comes from, as admitted.
pub struct Identity {
    /// The certificate's common name.
    pub common_name: String,
    /// The certificate's serial, as the CRL lists it (for revocation).
    pub serial: String,
    /// The certificate's groups (its Subject OU values).
    pub groups: Vec<String>,
}

/// What the data path and the administrator know of a live session.
pub struct Session {
    /// The connection log's id of this session.
    pub connection_id: String,
    /// The certificate's common name.
    pub common_name: String,
    /// The certificate's serial (hex), as the CRL lists it.
    pub serial: String,
    /// The address assigned from the pool.
    pub address: Ipv4Addr,
    /// The client's public address and port.
    pub device: SocketAddr,
    /// When the connection was accepted.
    pub started: time::OffsetDateTime,
    /// The wire protocol.
    pub protocol: Protocol,
    /// The session carries its packets over UDP: logged as transport "udp".
    pub udp: bool,
    /// Traffic so far.
    pub counters: Counters,
    /// The certificate's groups.
    pub groups: Vec<String>,
    /// Their mask under the policy of the generation it was computed for.
    mask: ArcSwap<(u64, GroupMask)>,
    /// The route generation the client was last told (OpenVPN clients
    /// cannot take routes live: they are stale after a route change).
    pub routes_generation: std::sync::atomic::AtomicU64,
    /// The tun queue this session's packets go in by (any number: taken
    /// modulo the queues), so that the kernel hands its flows' replies
    /// to one packet thread whichever thread wrote them: set by the packet
    /// thread its datagrams reach, followed by its stream's writes.
    pub lane: std::sync::atomic::AtomicUsize,
    link: Arc<dyn Link>,
    end: Notify,
    end_reason: Mutex<Option<String>>,
}

/// What a protocol's shell says about a new session.
pub struct NewSession {
    /// Identity of the admitted client.
    pub identity: Identity,
    /// The assigned address.
    pub address: Ipv4Addr,
    /// The client's public address and port.
    pub device: SocketAddr,
    /// When the connection was accepted.
    pub started: time::OffsetDateTime,
    /// The wire protocol.
    pub protocol: Protocol,
    /// Packets travel over UDP.
    pub udp: bool,
    /// How packets for the client leave (the shell keeps its own
    /// reference to drain what the link queues).
    pub link: Arc<dyn Link>,
}

impl Session {
    /// A session with a new connection id.
    pub fn new(n: NewSession) -> Session {
        Session {
            connection_id: super::connlog::new_connection_id(),
            common_name: n.identity.common_name,
            serial: n.identity.serial,
            address: n.address,
            device: n.device,
            started: n.started,
            protocol: n.protocol,
            udp: n.udp,
            counters: Counters::default(),
            groups: n.identity.groups,
            mask: ArcSwap::from_pointee((u64::MAX, GroupMask::default())),
            routes_generation: Default::default(),
            lane: std::sync::atomic::AtomicUsize::new(u32::from(n.address) as usize),
            link: n.link,
            end: Notify::new(),
            end_reason: Mutex::new(None),
        }
    }

    /// The session's groups as `policy` numbers them: cached per policy
    /// generation, so a reload that numbers groups anew never lends a
    /// session another group's rights.
    #[inline]
    pub fn group_mask(&self, policy: &Policy) -> GroupMask {
        let cached = self.mask.load();
        if cached.0 == policy.generation {
            return cached.1;
        }
        let mask = policy.group_mask(&self.groups);
        self.mask.store(Arc::new((policy.generation, mask)));
        mask
    }

    /// Sends one packet (virtio-net header and IPv4 packet) to the
    /// client and counts it; false if it was dropped.
    #[inline]
    pub fn send(&self, packet: &[u8]) -> bool {
        let sent = self.link.send(packet);
        if sent {
            let c = &self.counters;
            Counters::add(
                &c.egress_bytes,
                &c.egress_packets,
                packet.len().saturating_sub(cvpn_proto::VNET_HDR_LEN),
            );
        }
        sent
    }

    /// Tells the client its new routes (see `Link::update_routes`); if it
    /// takes them, it is up to date with route generation `generation`.
    pub fn update_routes(&self, routes: &[ipnet::Ipv4Net], generation: u64) -> bool {
        let taken = self.link.update_routes(routes);
        if taken {
            self.routes_generation.store(generation, Ordering::Relaxed);
        }
        taken
    }

    /// A connection-log record of this session.
    pub fn record(&self, event: Event) -> Record {
        Record {
            connection_id: self.connection_id.clone(),
            common_name: Some(self.common_name.clone()),
            client_ip: Some(self.address),
            device: self.device,
            udp: self.udp,
            start: self.started,
            event,
        }
    }

    /// Who and where the session is, as `connections` names it (without
    /// its counters).
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "connection-id": self.connection_id,
            "common-name": self.common_name,
            "client-ip": self.address.to_string(),
            "device-ip": self.device.ip().to_string(),
            "port": self.device.port().to_string(),
            "protocol": self.protocol.name(),
            "transport-protocol": if self.udp { "udp" } else { "tcp" },
            "connection-start-time": self.started.unix_timestamp(),
        })
    }

    /// Traffic so far.
    pub fn traffic(&self) -> Traffic {
        self.counters.traffic()
    }

    /// Asks the session to end, with the reason logged (the first one
    /// given wins).
    pub fn terminate(&self, reason: &str) {
        let mut r = self.end_reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason.to_string());
        }
        drop(r);
        self.end.notify_one();
    }

    /// Resolves when `terminate` was called; returns the reason.
    pub async fn ended(&self) -> String {
        self.end.notified().await;
        self.reason().unwrap_or_else(|| "terminated".into())
    }

    /// Why the session was told to end, if it was.
    pub fn reason(&self) -> Option<String> {
        self.end_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
