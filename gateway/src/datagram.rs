//! The gateway's side of a session's datagram channel (`transport_protocol
//! = "udp"`): its keys, and where and when the client's datagrams last came
//! from. The UDP socket itself is in serve.rs.
//!
//! The client's UDP address is learned from its authentic datagrams (and
//! follows it when a NAT rebinds); the gateway sends datagrams only while
//! the client's have kept arriving, and otherwise uses the TLS stream.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cvpn_proto::datagram::{DatagramError, DatagramOffer, Opener, Sealer, Secret};

/// The client probes every PROBE_EVERY; without any datagram from it for
/// this long, the path is taken for broken.
pub const PATH_TIMEOUT: Duration = Duration::from_secs(12);

pub struct DatagramPath {
    pub session: u64,
    opener: Mutex<Opener>,
    sealer: Mutex<Sealer>,
    /// The client's address and when its last authentic datagram came.
    peer: Mutex<Option<(SocketAddr, Instant)>>,
}

impl DatagramPath {
    /// New random keys and session id; None without system randomness.
    pub fn offer(port: u16) -> Option<(DatagramPath, DatagramOffer)> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).ok()?;
        let offer = DatagramOffer {
            port,
            session: u64::from_be_bytes(id),
            to_gateway: Secret::random()?,
            to_client: Secret::random()?,
        };
        let path = DatagramPath {
            session: offer.session,
            opener: Mutex::new(Opener::new(&offer.to_gateway, offer.session)),
            sealer: Mutex::new(Sealer::new(&offer.to_client, offer.session)),
            peer: Mutex::new(None),
        };
        Some((path, offer))
    }

    /// Opens one datagram from `from`; an authentic one updates the
    /// client's address.
    pub fn open<'a>(
        &self,
        datagram: &'a mut [u8],
        from: SocketAddr,
        now: Instant,
    ) -> Result<(u8, &'a [u8]), DatagramError> {
        let opened = lock(&self.opener).open(datagram)?;
        *lock(&self.peer) = Some((from, now));
        Ok(opened)
    }

    /// Where to send datagrams, if the client's are still arriving.
    pub fn live_peer(&self, now: Instant) -> Option<SocketAddr> {
        let peer = *lock(&self.peer);
        peer.filter(|(_, seen)| now.saturating_duration_since(*seen) < PATH_TIMEOUT)
            .map(|(addr, _)| addr)
    }

    pub fn seal(&self, kind: u8, payload: &[u8], out: &mut [u8]) -> Result<usize, DatagramError> {
        lock(&self.sealer).seal(kind, payload, out)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters and addresses stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvpn_proto::datagram::{KIND_PACKET, KIND_PROBE, OVERHEAD};

    #[test]
    fn the_path_lives_while_client_datagrams_arrive() {
        let (path, offer) = DatagramPath::offer(443).unwrap();
        assert_eq!(offer.session, path.session);
        let t0 = Instant::now();
        assert_eq!(path.live_peer(t0), None);
        let mut client = Sealer::new(&offer.to_gateway, offer.session);
        let mut d = [0u8; 64];
        let n = client.seal(KIND_PROBE, b"", &mut d).unwrap();
        let from: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        assert_eq!(
            path.open(&mut d[..n], from, t0).unwrap(),
            (KIND_PROBE, &b""[..])
        );
        assert_eq!(path.live_peer(t0 + Duration::from_secs(5)), Some(from));
        assert_eq!(path.live_peer(t0 + PATH_TIMEOUT), None);

        // A forged datagram from elsewhere moves nothing.
        let n = client.seal(KIND_PACKET, b"hi", &mut d).unwrap();
        d[n - 1] ^= 1;
        let other: SocketAddr = "203.0.113.9:1".parse().unwrap();
        assert!(path.open(&mut d[..n], other, t0).is_err());
        assert_eq!(path.live_peer(t0), Some(from));

        // A real one from a new address (a NAT rebinding) moves the peer.
        let n = client.seal(KIND_PACKET, b"hi", &mut d).unwrap();
        path.open(&mut d[..n], other, t0).unwrap();
        assert_eq!(path.live_peer(t0), Some(other));

        // What the gateway seals, the client opens.
        let mut back = [0u8; 64];
        let n = path.seal(KIND_PACKET, b"reply", &mut back).unwrap();
        assert_eq!(n, 5 + OVERHEAD);
        let mut opener = Opener::new(&offer.to_client, offer.session);
        assert_eq!(opener.open(&mut back[..n]).unwrap().1, b"reply");
    }
}
