//! The tunnel's TLS stream on rustls' own record path (tokio-rustls), with
//! the same interface as `tls.rs`: built only with the `rustls-records`
//! feature, to measure the tunnel's record layer against rustls' in one
//! run (bench/README.md: "Record layer"). Not for production builds.

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::ClientConnectionData;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ServerConnectionData;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    /// The socket failed (rustls errors arrive wrapped in it too).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

enum Inner<T> {
    Server(Box<tokio_rustls::server::TlsStream<T>>),
    Client(Box<tokio_rustls::client::TlsStream<T>>),
}

/// An established tunnel stream on rustls' record path.
pub struct TlsTunnel<T, D> {
    inner: Inner<T>,
    _side: PhantomData<D>,
}

/// Server side: runs the handshake on `io`.
pub async fn accept<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    config: Arc<ServerConfig>,
) -> Result<TlsTunnel<T, ServerConnectionData>, TlsError> {
    let s = tokio_rustls::TlsAcceptor::from(config).accept(io).await?;
    Ok(TlsTunnel {
        inner: Inner::Server(Box::new(s)),
        _side: PhantomData,
    })
}

/// Client side: runs the handshake on `io`, checking the server's
/// certificate against `name`.
pub async fn connect<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<TlsTunnel<T, ClientConnectionData>, TlsError> {
    let s = tokio_rustls::TlsConnector::from(config)
        .connect(name, io)
        .await?;
    Ok(TlsTunnel {
        inner: Inner::Client(Box::new(s)),
        _side: PhantomData,
    })
}

impl<T, D> TlsTunnel<T, D> {
    /// The transport underneath.
    pub fn get_ref(&self) -> &T {
        match &self.inner {
            Inner::Server(s) => s.get_ref().0,
            Inner::Client(s) => s.get_ref().0,
        }
    }

    /// The peer's certificate chain, leaf first.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        let certs = match &self.inner {
            Inner::Server(s) => s.get_ref().1.peer_certificates(),
            Inner::Client(s) => s.get_ref().1.peer_certificates(),
        };
        certs.unwrap_or(&[])
    }

    /// Not tracked on rustls' path (rustls updates keys itself).
    pub fn records_sent_under_current_key(&self) -> u64 {
        0
    }

    /// The negotiated ALPN protocol.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Server(s) => s.get_ref().1.alpn_protocol(),
            Inner::Client(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin, D: Unpin> AsyncRead for TlsTunnel<T, D> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin, D: Unpin> AsyncWrite for TlsTunnel<T, D> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Inner::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Inner::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
