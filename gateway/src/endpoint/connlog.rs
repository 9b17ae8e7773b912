//! The connection log: one JSON object per line, with the field names (and
//! string values, "NA" when not applicable) of the managed service's
//! connection logs, so existing log tooling reads it.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

#[derive(Clone, Debug, Default)]
pub struct Traffic {
    pub ingress_bytes: u64,
    pub egress_bytes: u64,
    pub ingress_packets: u64,
    pub egress_packets: u64,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// The client was admitted.
    Connected,
    /// The attempt failed before a session existed.
    Failed { reason: String },
    /// A session ended.
    Ended {
        end: OffsetDateTime,
        reason: String,
        traffic: Traffic,
    },
}

#[derive(Clone, Debug)]
pub struct Record {
    pub connection_id: String,
    pub common_name: Option<String>,
    pub client_ip: Option<Ipv4Addr>,
    pub device: SocketAddr,
    /// The session carried packets over UDP: logged as transport "udp".
    pub udp: bool,
    pub start: OffsetDateTime,
    pub event: Event,
}

/// A new connection id, as the managed service writes them.
pub fn new_connection_id() -> String {
    let mut b = [0u8; 8];
    // Without the OS's randomness, the clock still tells sessions apart in logs.
    if getrandom::fill(&mut b).is_err() {
        b = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64).to_be_bytes();
    }
    format!(
        "cvpn-conn-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn stamp(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(fmt).unwrap_or_else(|_| "NA".into())
}

fn na<T: ToString>(v: Option<T>) -> Value {
    Value::String(v.map(|v| v.to_string()).unwrap_or_else(|| "NA".into()))
}

impl Record {
    pub fn to_json(&self) -> Value {
        let (log_type, status, failure, end, reset_reason, traffic) = match &self.event {
            Event::Connected => ("connection-attempt", "successful", None, None, None, None),
            Event::Failed { reason } => (
                "connection-attempt",
                "failed",
                Some(reason.clone()),
                None,
                None,
                None,
            ),
            Event::Ended {
                end,
                reason,
                traffic,
            } => (
                "connection-reset",
                "NA",
                None,
                Some(*end),
                Some(reason.clone()),
                Some(traffic.clone()),
            ),
        };
        let duration = end.map(|e| (e - self.start).whole_seconds().max(0));
        let t = traffic.unwrap_or_default();
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("connection-log-type", json!(log_type));
        put("connection-attempt-status", json!(status));
        put("connection-attempt-failure-reason", na(failure));
        put("connection-reset-reason", na(reset_reason));
        put("connection-id", json!(self.connection_id));
        put("client-ip", na(self.client_ip));
        put("common-name", na(self.common_name.as_ref()));
        put("device-ip", json!(self.device.ip().to_string()));
        put("port", json!(self.device.port().to_string()));
        put(
            "transport-protocol",
            json!(if self.udp { "udp" } else { "tcp" }),
        );
        put("connection-start-time", json!(stamp(self.start)));
        put(
            "connection-last-update-time",
            json!(stamp(end.unwrap_or(self.start))),
        );
        put("connection-end-time", na(end.map(stamp)));
        put("connection-duration-seconds", na(duration));
        put("ingress-bytes", json!(t.ingress_bytes.to_string()));
        put("egress-bytes", json!(t.egress_bytes.to_string()));
        put("ingress-packets", json!(t.ingress_packets.to_string()));
        put("egress-packets", json!(t.egress_packets.to_string()));
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_the_managed_service() {
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let rec = Record {
            connection_id: "cvpn-conn-1".into(),
            common_name: Some("alice".into()),
            client_ip: Some(Ipv4Addr::new(10, 250, 0, 2)),
            device: "198.18.0.2:40000".parse().unwrap(),
            udp: false,
            start,
            event: Event::Ended {
                end: start + time::Duration::seconds(90),
                reason: "client disconnected".into(),
                traffic: Traffic {
                    ingress_bytes: 10,
                    egress_bytes: 20,
                    ingress_packets: 1,
                    egress_packets: 2,
                },
            },
        };
        let v = rec.to_json();
        for key in [
            "connection-log-type",
            "connection-attempt-status",
            "connection-attempt-failure-reason",
            "connection-id",
            "client-ip",
            "common-name",
            "device-ip",
            "port",
            "transport-protocol",
            "connection-start-time",
            "connection-end-time",
            "connection-duration-seconds",
            "ingress-bytes",
            "egress-bytes",
            "ingress-packets",
            "egress-packets",
        ] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        assert_eq!(v["connection-log-type"], "connection-reset");
        assert_eq!(v["connection-duration-seconds"], "90");
        assert_eq!(v["connection-start-time"], "2023-11-14 22:13:20");
        assert_eq!(v["egress-packets"], "2");
        assert_eq!(v["device-ip"], "198.18.0.2");
        assert_eq!(v["transport-protocol"], "tcp");

        let failed = Record {
            event: Event::Failed {
                reason: "certificate revoked".into(),
            },
            common_name: None,
            client_ip: None,
            ..rec
        };
        let v = failed.to_json();
        assert_eq!(v["connection-attempt-status"], "failed");
        assert_eq!(
            v["connection-attempt-failure-reason"],
            "certificate revoked"
        );
        assert_eq!(v["common-name"], "NA");
        assert_eq!(v["connection-end-time"], "NA");
    }
}
