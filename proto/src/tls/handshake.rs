//! The handshake: rustls' unbuffered connection driven over the socket
//! until it hands over the traffic secrets, then the tunnel stream.

use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, ExtractedSecrets, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{IDLE_READ, MAX_HANDSHAKE_BUFFER, Refusal, TlsError, TlsTunnel};

/// Either end's unbuffered rustls connection, as the handshake driver
/// needs it.
pub(super) trait Handshaking {
    type Data;
    /// This end is the server.
    const SERVER: bool;
    fn common(&self) -> &rustls::CommonState;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn into_kernel(self)
    -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
}

/// rustls has the same calls on both ends, on two unrelated types.
macro_rules! handshaking {
    ($conn:ty, $data:ty, $server:expr) => {
        impl Handshaking for $conn {
            type Data = $data;
            const SERVER: bool = $server;
            fn common(&self) -> &rustls::CommonState {
                self
            }
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn into_kernel(
                self,
            ) -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error> {
                self.dangerous_into_kernel_connection()
            }
        }
    };
}

handshaking!(UnbufferedServerConnection, ServerConnectionData, true);
handshaking!(UnbufferedClientConnection, ClientConnectionData, false);

/// Server side: runs the handshake on `io`. The configuration must have
/// `enable_secret_extraction` set.
pub async fn accept<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    config: Arc<ServerConfig>,
) -> Result<TlsTunnel<T, ServerConnectionData>, TlsError> {
    handshake(io, UnbufferedServerConnection::new(config)?).await
}

/// Client side: runs the handshake on `io`, checking the server's
/// certificate against `name`.
pub async fn connect<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<TlsTunnel<T, ClientConnectionData>, TlsError> {
    handshake(io, UnbufferedClientConnection::new(config, name)?).await
}

async fn handshake<T, C>(mut io: T, mut conn: C) -> Result<TlsTunnel<T, C::Data>, TlsError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: Handshaking,
{
    let mut incoming = vec![0u8; IDLE_READ];
    let mut filled = 0;
    let mut outgoing = Vec::new();
    // Application data that arrived with the handshake's last flight.
    let mut early = Vec::new();
    loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming[..filled]);
        let next = match state {
            Err(e) => Next::Fail(e),
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                // An empty buffer makes rustls say how much room it needs.
                let need = match enc.encode(&mut []) {
                    Err(EncodeError::InsufficientSize(s)) => s.required_size,
                    Ok(_) => 0,
                    Err(e) => return Err(rustls::Error::General(e.to_string()).into()),
                };
                let at = outgoing.len();
                outgoing.resize(at + need, 0);
                if need > 0 {
                    enc.encode(&mut outgoing[at..])
                        .map_err(|e| rustls::Error::General(e.to_string()))?;
                }
                Next::Process
            }
            Ok(ConnectionState::TransmitTlsData(tx)) => {
                tx.done();
                Next::Transmit
            }
            Ok(ConnectionState::ReadTraffic(mut rd)) => {
                while let Some(r) = rd.next_record() {
                    early.extend_from_slice(r?.payload);
                }
                Next::Process
            }
            Ok(ConnectionState::WriteTraffic(_)) => Next::Traffic,
            Ok(ConnectionState::BlockedHandshake) => Next::Read,
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                return Err(TlsError::Closed);
            }
            Ok(other) => {
                return Err(rustls::Error::General(format!("unexpected {other:?}")).into());
            }
        };
        incoming.copy_within(discard..filled, 0);
        filled -= discard;
        match next {
            Next::Process => {}
            Next::Fail(e) => {
                send_alert(&mut io, &mut conn, &mut incoming[..filled]).await;
                return Err(e.into());
            }
            Next::Transmit => {
                io.write_all(&outgoing).await?;
                io.flush().await?;
                outgoing.clear();
            }
            // With client authentication the server may send before the
            // client's certificate is checked; the handshake is done when
            // both directions are open.
            Next::Traffic if !conn.common().is_handshaking() => {
                incoming.truncate(filled);
                return TlsTunnel::new(io, conn, incoming, early);
            }
            Next::Traffic | Next::Read => {
                if filled == incoming.len() {
                    // rustls refuses handshake messages over 64 KiB long
                    // before this: the cap only bounds a confused peer.
                    if filled >= MAX_HANDSHAKE_BUFFER {
                        return Err(Refusal::Decode("handshake message too large").into());
                    }
                    incoming.resize(incoming.len() * 2, 0);
                }
                match io.read(&mut incoming[filled..]).await? {
                    0 => return Err(TlsError::Closed),
                    n => filled += n,
                }
            }
        }
    }
}

/// What the handshake driver does once rustls' state is handled.
enum Next {
    Process,
    Transmit,
    Read,
    Traffic,
    Fail(rustls::Error),
}

/// After a failed handshake rustls has an alert queued: tell the peer why.
async fn send_alert<T: AsyncWrite + Unpin, C: Handshaking>(
    io: &mut T,
    conn: &mut C,
    incoming: &mut [u8],
) {
    let mut out = vec![0u8; 512];
    let status = conn.process(incoming);
    if let Ok(ConnectionState::EncodeTlsData(mut enc)) = status.state
        && let Ok(n) = enc.encode(&mut out)
    {
        let _ = io.write_all(&out[..n]).await;
        let _ = io.flush().await;
    }
}
