//! The tunnel's TLS 1.3 stream. rustls runs the handshake (its unbuffered
//! API) and then hands over the traffic secrets through its kernel
//! connection API; from there `record` seals and opens records in this
//! stream's own buffers, and rustls is asked only for the next secrets when
//! either side updates its keys.
//!
//! The stream is what both ends of the tunnel read and write; the load tool
//! keeps stock tokio-rustls, so every load test is also an interoperability
//! test of this record layer against rustls'.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::AlertDescription;
use rustls::kernel::KernelConnection;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::record::{self, ALERT, APPLICATION_DATA, HANDSHAKE, RecordError, RecordKey};

mod handshake;

use handshake::Handshaking;
pub use handshake::{accept, connect};

/// Read buffer of an idle stream; it grows to BUSY_READ while reads fill it.
const IDLE_READ: usize = 4 * 1024;
const BUSY_READ: usize = 256 * 1024;
/// Most the handshake may buffer of an incomplete message.
const MAX_HANDSHAKE_BUFFER: usize = 256 * 1024;
/// Sealed bytes a writer may queue before it waits for the socket.
const WRITE_HIGH: usize = 512 * 1024;
/// What a drained write buffer keeps of its allocation.
const WRITE_KEEP: usize = 64 * 1024;

const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;
const CLOSE_NOTIFY: [u8; 2] = [1, 0];
const USER_CANCELED: u8 = 90;
/// Key updates a peer may send in a row without any data between them:
/// more is a peer making us derive keys for nothing.
const MAX_KEY_UPDATES_IN_A_ROW: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("connection closed during the TLS handshake")]
    Closed,
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// An established tunnel stream: AsyncRead/AsyncWrite of the plaintext.
pub struct TlsTunnel<T, D> {
    io: T,
    keys: KernelConnection<D>,
    rx: RecordKey,
    tx: RecordKey,
    /// Update our sending key after this many records.
    rekey_at: u64,
    /// The peer asked us to update our key too (owed before our next data).
    key_update_owed: bool,
    /// Key updates received since the last application data.
    key_updates_in_a_row: u32,
    /// This end is the server (a client must not send session tickets).
    server: bool,
    /// A fatal error ended the stream (an alert was sent): nothing more
    /// is read or written.
    failed: bool,
    peer_certificates: Vec<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
    /// Received bytes: `rbuf[rpos..filled]` not yet opened, `plain` the
    /// opened content not yet read. Kept initialised, so reads need no
    /// unsafe code.
    rbuf: Vec<u8>,
    rpos: usize,
    filled: usize,
    plain: Range<usize>,
    last_read: usize,
    peer_closed: bool,
    /// Sealed bytes, `wbuf[wpos..]` not yet written.
    wbuf: Vec<u8>,
    wpos: usize,
    close_sent: bool,
}

impl<T, D> TlsTunnel<T, D> {
    fn new<C>(io: T, conn: C, leftover: Vec<u8>, early: Vec<u8>) -> Result<Self, TlsError>
    where
        C: Handshaking<Data = D>,
    {
        let peer_certificates = conn
            .common()
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let alpn = conn.common().alpn_protocol().map(<[u8]>::to_vec);
        let (secrets, keys) = conn.into_kernel()?;
        let limit = keys
            .negotiated_cipher_suite()
            .tls13()
            .map(|s| s.common.confidentiality_limit)
            .ok_or_else(|| rustls::Error::General("the tunnel is TLS 1.3 only".into()))?;
        let filled = leftover.len();
        let mut rbuf = leftover;
        // The early application data goes in front, as if just opened.
        let plain = 0..early.len();
        rbuf.splice(0..0, early);
        rbuf.resize(rbuf.len().max(IDLE_READ), 0);
        Ok(Self {
            io,
            rx: RecordKey::new(&secrets.rx.1, secrets.rx.0)?,
            tx: RecordKey::new(&secrets.tx.1, secrets.tx.0)?,
            keys,
            rekey_at: limit / 2,
            key_update_owed: false,
            key_updates_in_a_row: 0,
            server: C::SERVER,
            failed: false,
            peer_certificates,
            alpn,
            rpos: plain.end,
            filled: plain.end + filled,
            plain,
            rbuf,
            last_read: 0,
            peer_closed: false,
            wbuf: Vec::new(),
            wpos: 0,
            close_sent: false,
        })
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The peer's certificate chain, leaf first.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer_certificates
    }

    /// Records sealed under the current sending key: a key update starts
    /// it again at zero.
    pub fn records_sent_under_current_key(&self) -> u64 {
        self.tx.seq()
    }

    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// Updates our sending key after `records` records under one key
    /// instead of at half the cipher's confidentiality limit (only ever
    /// lowered: tests cross the limit with it).
    pub fn set_rekey_limit(&mut self, records: u64) {
        self.rekey_at = self.rekey_at.min(records.max(1));
    }

    /// Ends the stream on `err`: a fatal alert for the peer is sealed (sent
    /// with the next drain, best effort) and every later call fails.
    fn fail(&mut self, alert: AlertDescription, err: TlsError) -> TlsError {
        if !self.failed && !self.close_sent {
            let _ = record::seal(&mut self.tx, ALERT, &[2, u8::from(alert)], &mut self.wbuf);
        }
        self.failed = true;
        err
    }

    /// Opens the record at the front of the read buffer if it is whole.
    /// Ok(false): more bytes are needed.
    fn open_next(&mut self) -> Result<bool, TlsError> {
        let avail = &mut self.rbuf[self.rpos..self.filled];
        let n = match record::record_len(avail)? {
            Some(n) if n <= avail.len() => n,
            _ => return Ok(false),
        };
        let (typ, content) = record::open(&mut self.rx, &mut avail[..n])?;
        let content = self.rpos + content.start..self.rpos + content.end;
        self.rpos += n;
        match typ {
            APPLICATION_DATA => {
                self.plain = content;
                self.key_updates_in_a_row = 0;
            }
            HANDSHAKE => {
                let msg = self.rbuf[content].to_vec();
                self.on_handshake(&msg)?;
            }
            ALERT => match &self.rbuf[content] {
                m if m == CLOSE_NOTIFY => self.peer_closed = true,
                // RFC 8446 6.1: user_canceled is followed by close_notify.
                [_, USER_CANCELED] => {}
                [_, d] => {
                    let why = AlertDescription::from(*d);
                    self.failed = true;
                    return Err(rustls::Error::AlertReceived(why).into());
                }
                _ => return Err(Refusal::Decode("malformed alert").into()),
            },
            _ => return Err(Refusal::Unexpected("unexpected record content type").into()),
        }
        Ok(true)
    }

    /// Opens the next record; any failure ends the stream with the alert
    /// RFC 8446 asks for (bad_record_mac, record_overflow, ...).
    fn open_or_fail(&mut self) -> Result<bool, TlsError> {
        match self.open_next() {
            Ok(more) => Ok(more),
            Err(TlsError::Record(e)) => self.fail_with(e.alert(), TlsError::Record(e)),
            Err(TlsError::Refused(r)) => self.fail_with(r.alert(), TlsError::Refused(r)),
            Err(e) => Err(e),
        }
    }

    fn fail_with(&mut self, alert: AlertDescription, err: TlsError) -> Result<bool, TlsError> {
        Err(self.fail(alert, err))
    }

    /// Post-handshake messages: key updates; session tickets are not used.
    fn on_handshake(&mut self, mut msg: &[u8]) -> Result<(), TlsError> {
        while let [typ, a, b, c, rest @ ..] = msg {
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            let Some((body, next)) = rest.split_at_checked(len) else {
                return Err(Refusal::Unexpected("handshake message split across records").into());
            };
            match (*typ, body) {
                (KEY_UPDATE, [req @ (0 | 1)]) if next.is_empty() => {
                    self.key_updates_in_a_row += 1;
                    if self.key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW {
                        return Err(Refusal::Unexpected("too many key updates in a row").into());
                    }
                    let (seq, secrets) = self.keys.update_rx_secret()?;
                    self.rx = RecordKey::new(&secrets, seq)?;
                    self.key_update_owed |= *req == 1;
                }
                (KEY_UPDATE, _) => return Err(Refusal::Decode("malformed key update").into()),
                // A server may send tickets (they are not used); a client
                // never may (RFC 8446 4.6.1).
                (NEW_SESSION_TICKET, _) if !self.server => {}
                _ => return Err(Refusal::Unexpected("unexpected post-handshake message").into()),
            }
            msg = next;
        }
        if msg.is_empty() {
            Ok(())
        } else {
            Err(Refusal::Decode("truncated handshake message").into())
        }
    }

    /// Sends a key update first when the peer asked for one or our key is
    /// near its confidentiality limit.
    fn rekey_if_due(&mut self) -> Result<(), TlsError> {
        if !self.key_update_owed && self.tx.seq() < self.rekey_at {
            return Ok(());
        }
        record::seal(
            &mut self.tx,
            HANDSHAKE,
            &[KEY_UPDATE, 0, 0, 1, 0],
            &mut self.wbuf,
        )?;
        let (seq, secrets) = self.keys.update_tx_secret()?;
        self.tx = RecordKey::new(&secrets, seq)?;
        self.key_update_owed = false;
        Ok(())
    }
}

/// What the peer sent that the protocol forbids, with the alert it gets.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A message this end must not receive now (unexpected_message).
    #[error("{0}")]
    Unexpected(&'static str),
    /// A message that does not parse (decode_error).
    #[error("{0}")]
    Decode(&'static str),
}

impl Refusal {
    fn alert(&self) -> AlertDescription {
        match self {
            Refusal::Unexpected(_) => AlertDescription::UnexpectedMessage,
            Refusal::Decode(_) => AlertDescription::DecodeError,
        }
    }
}

fn ended() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the TLS stream has ended")
}

impl<T: AsyncRead + AsyncWrite + Unpin, D: Unpin> TlsTunnel<T, D> {
    /// Reads more bytes from the socket behind what is buffered.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.filled, 0);
            self.filled -= self.rpos;
            self.rpos = 0;
            self.plain = 0..0;
        }
        // Room for a whole record at least; more while reads fill the buffer.
        let mut want = if self.last_read * 2 >= self.rbuf.len() {
            (self.rbuf.len() * 2).min(BUSY_READ)
        } else {
            self.rbuf.len()
        };
        if let Ok(Some(n)) = record::record_len(&self.rbuf[..self.filled]) {
            want = want.max(n);
        }
        if self.rbuf.len() < want {
            self.rbuf.resize(want, 0);
        }
        let mut rb = ReadBuf::new(&mut self.rbuf[self.filled..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Pending => {
                // Idle: give the busy-time buffer back.
                if self.filled == 0 && self.rbuf.len() > IDLE_READ && self.last_read < IDLE_READ / 2
                {
                    self.rbuf = vec![0; IDLE_READ];
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )));
                }
                self.filled += n;
                self.last_read = n;
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Writes out what is sealed.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        let sent = self.wpos;
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > WRITE_KEEP && sent < WRITE_KEEP / 4 {
            self.wbuf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin, D: Unpin> AsyncRead for TlsTunnel<T, D> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(out.remaining());
                out.put_slice(&this.rbuf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(ended()));
            }
            match this.open_or_fail() {
                Ok(true) => {}
                Ok(false) => ready!(this.poll_fill(cx))?,
                Err(e) => {
                    // The alert goes out if the socket takes it now.
                    let _ = this.poll_drain(cx);
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin, D: Unpin> AsyncWrite for TlsTunnel<T, D> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent || this.failed {
            // RFC 8446 6.1: nothing is sent after close_notify.
            return Poll::Ready(Err(ended()));
        }
        if this.wbuf.len() - this.wpos >= WRITE_HIGH {
            ready!(this.poll_drain(cx))?;
        }
        this.rekey_if_due()?;
        let n = data.len().min(WRITE_HIGH);
        record::seal(&mut this.tx, APPLICATION_DATA, &data[..n], &mut this.wbuf)
            .map_err(TlsError::from)?;
        // Sent at once as far as the socket takes it; the rest goes out
        // with the next write or the flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && !this.failed {
            this.rekey_if_due()?;
            record::seal(&mut this.tx, ALERT, &CLOSE_NOTIFY, &mut this.wbuf)
                .map_err(TlsError::from)?;
            this.close_sent = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
