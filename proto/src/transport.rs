//! The TCP connection under the TLS stream, as both ends tune it.
//!
//! Nagle is off: a packet leaves when it is written. Delayed ACKs are kept
//! on: Linux drops out of delayed-ACK mode whenever its delayed-ACK timer
//! fires, i.e. after some 40 ms without traffic, and then answers the next
//! small segment with an immediate pure ACK. That ACK is built and carried
//! through the receiver's stack before the reader's wake-up completes, on
//! the path of every packet that wakes an idle tunnel (a ping, a keystroke);
//! with delayed ACKs the reply carries it instead. Re-entering the mode
//! after a write costs one system call, so it is done at most every
//! `REARM_EVERY`: the mode cannot be lost sooner than the timer fires.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

const REARM_EVERY: Duration = Duration::from_millis(10);

pub struct Transport {
    /// A duplicate of the connection's descriptor, for socket options only.
    socket: socket2::Socket,
    rearmed: Option<Instant>,
}

impl Transport {
    /// Tunes a connected TCP socket.
    pub fn new(tcp: &impl AsFd) -> io::Result<Self> {
        let socket = socket2::Socket::from(tcp.as_fd().try_clone_to_owned()?);
        socket.set_tcp_nodelay(true)?;
        Ok(Self {
            socket,
            rearmed: None,
        })
    }

    /// Call after each write: keeps ACKs riding on the peer's answers.
    pub fn wrote(&mut self) {
        let now = Instant::now();
        if self
            .rearmed
            .is_some_and(|t| now.duration_since(t) < REARM_EVERY)
        {
            return;
        }
        self.rearmed = Some(now);
        // Failing leaves the kernel's default behaviour: slower, not wrong.
        let _ = self.socket.set_tcp_quickack(false);
    }

    /// Whether the socket is in delayed-ACK mode right now.
    pub fn delays_acks(&self) -> io::Result<bool> {
        self.socket.tcp_quickack().map(|quick| !quick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_write_puts_the_socket_back_in_delayed_ack_mode() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut t = Transport::new(&client).unwrap();
        assert!(client.nodelay().unwrap());
        // A fresh connection starts in quick-ACK mode.
        assert!(!t.delays_acks().unwrap());
        client.write_all(b"ping").unwrap();
        t.wrote();
        assert!(t.delays_acks().unwrap());
        let mut b = [0u8; 4];
        server.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
    }
}
