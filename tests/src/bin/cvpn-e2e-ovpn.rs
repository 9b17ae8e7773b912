//! A crafted OpenVPN client over TCP, run inside the test namespaces to do
//! what stock clients never do:
//!
//! - `close-notify`: authenticates (TLS 1.3, key method 2), then sends a
//!   TLS close_notify followed by another control packet, and reports
//!   whether the gateway closes the connection;
//! - `pending`: opens many connections that stay in the handshake, each
//!   having sent all but the last byte of the largest TLS handshake
//!   message and then the largest control packets the gateway takes, out
//!   of order so that they are buffered, and holds them open.
//!
//! Both stop by themselves (`--hold` seconds at most).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cvpn_gw::protocol::openvpn::control::MAX_RECEIVED_PAYLOAD;
use cvpn_gw::protocol::openvpn::packet::{
    ACK_V1, Acks, CONTROL_V1, ControlPacket, HARD_RESET_CLIENT_V2, MAX_ACKS, SessionId,
};
use cvpn_gw::protocol::openvpn::reliable::Reliable;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

fn arg(args: &[String], name: &str) -> Result<String, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("{name} missing"))
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_packet(s: &mut TcpStream, p: &[u8]) -> std::io::Result<()> {
    let mut framed = (p.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(p);
    s.write_all(&framed)
}

/// One packet; None at the end of the stream.
fn read_packet(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut p = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut p).ok()?;
    Some(p)
}

fn new_sid() -> SessionId {
    let mut sid = [0u8; 8];
    getrandom::fill(&mut sid).expect("randomness");
    sid
}

fn reset(sid: SessionId) -> Vec<u8> {
    let mut out = Vec::new();
    ControlPacket {
        opcode: HARD_RESET_CLIENT_V2,
        key_id: 0,
        session_id: sid,
        acks: Acks::default(),
        remote_session_id: None,
        message_id: Some(0),
        payload: b"",
    }
    .encode(&mut out);
    out
}

/// The client's side of the control channel of key id 0.
struct Client {
    stream: TcpStream,
    sid: SessionId,
    server: Option<SessionId>,
    reliable: Reliable,
    tls: ClientConnection,
    plaintext: Vec<u8>,
}

impl Client {
    fn connect(to: &str, config: Arc<ClientConfig>, name: &str) -> Result<Client, String> {
        let stream = TcpStream::connect(to).map_err(|e| format!("connect {to}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        let tls = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        let mut c = Client {
            stream,
            sid: new_sid(),
            server: None,
            reliable: Reliable::new(false),
            tls,
            plaintext: Vec::new(),
        };
        c.reliable.send(HARD_RESET_CLIENT_V2, Vec::new());
        c.flush()?;
        Ok(c)
    }

    /// Sends what TLS and the reliability layer have due.
    fn flush(&mut self) -> Result<(), String> {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out).map_err(|e| e.to_string())?;
        }
        for chunk in out.chunks(1000) {
            self.reliable.send(CONTROL_V1, chunk.to_vec());
        }
        loop {
            let mut acks = Acks::default();
            for id in self.reliable.take_acks(MAX_ACKS) {
                acks.push(id);
            }
            let remote = (!acks.is_empty()).then(|| self.server.unwrap_or_default());
            let mut p = Vec::new();
            match self.reliable.poll_transmit(Instant::now()) {
                Some(t) => ControlPacket {
                    opcode: t.opcode,
                    key_id: 0,
                    session_id: self.sid,
                    acks,
                    remote_session_id: remote,
                    message_id: Some(t.id),
                    payload: t.payload,
                }
                .encode(&mut p),
                None if !acks.is_empty() => ControlPacket {
                    opcode: ACK_V1,
                    key_id: 0,
                    session_id: self.sid,
                    acks,
                    remote_session_id: remote,
                    message_id: None,
                    payload: b"",
                }
                .encode(&mut p),
                None => return Ok(()),
            }
            write_packet(&mut self.stream, &p).map_err(|e| e.to_string())?;
        }
    }

    /// Reads and handles one packet from the gateway; false at the end of
    /// the stream.
    fn step(&mut self) -> Result<bool, String> {
        let Some(wire) = read_packet(&mut self.stream) else {
            return Ok(false);
        };
        let p = ControlPacket::parse(&wire).map_err(|e| e.to_string())?;
        self.server.get_or_insert(p.session_id);
        self.reliable.acknowledged(p.acks.as_slice());
        if let Some(id) = p.message_id {
            self.reliable.receive(id, p.opcode, p.payload);
        }
        while let Some((op, payload)) = self.reliable.next_in_order() {
            if op == CONTROL_V1 {
                self.tls
                    .read_tls(&mut &payload[..])
                    .map_err(|e| e.to_string())?;
                self.tls.process_new_packets().map_err(|e| e.to_string())?;
            }
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.tls.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            self.plaintext.extend_from_slice(&buf[..n]);
        }
        self.flush()?;
        Ok(true)
    }

    /// The key method 2 message of a 2.6 client (tls-ekm, DATA_V2).
    fn send_keys(&mut self) -> Result<(), String> {
        let mut m = vec![0, 0, 0, 0, 2];
        m.extend_from_slice(&[7; 48 + 64]);
        let mut s = |t: &str| {
            m.extend_from_slice(&(t.len() as u16 + 1).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
            m.push(0);
        };
        s("V4,dev-type tun,tls-client");
        s("");
        s("");
        s("IV_VER=2.6.14\nIV_PROTO=990\nIV_CIPHERS=AES-256-GCM\n");
        self.tls.writer().write_all(&m).map_err(|e| e.to_string())?;
        self.flush()
    }
}

fn tls_config(args: &[String]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(arg(args, "--ca")?).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let chain =
        vec![CertificateDer::from_pem_file(arg(args, "--cert")?).map_err(|e| e.to_string())?];
    let key = PrivateKeyDer::from_pem_file(arg(args, "--key")?).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// close-notify --connect ADDR --ca F --cert F --key F [--name N] [--hold S]
fn close_notify(args: &[String]) -> Result<(), String> {
    let hold = Duration::from_secs(num(args, "--hold", 10).min(120));
    let name = arg(args, "--name").unwrap_or_else(|_| "vpn.example.com".into());
    let mut c = Client::connect(&arg(args, "--connect")?, tls_config(args)?, &name)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.tls.is_handshaking() {
        if Instant::now() > deadline || !c.step()? {
            return Err("no TLS handshake".into());
        }
    }
    c.send_keys()?;
    // The gateway's key method 2 answer: it authenticated us.
    while c.plaintext.len() < 5 {
        if Instant::now() > deadline || !c.step()? {
            return Err("no key method 2 answer".into());
        }
    }
    println!("authenticated");
    c.tls.send_close_notify();
    c.flush()?;
    // Any control packet after the alert.
    c.reliable.send(CONTROL_V1, vec![0x17, 3, 3, 0, 1, 0]);
    c.flush()?;
    println!("sent close_notify and a record after it");
    let _ = std::io::stdout().flush();
    c.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let until = Instant::now() + hold;
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match c.stream.read(&mut buf) {
            Ok(0) => {
                println!("gateway closed the connection");
                return Ok(());
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                println!("gateway closed the connection");
                return Ok(());
            }
        }
    }
    println!("still open after {hold:?}");
    Ok(())
}

/// What one pending handshake sends: in order, TLS records carrying the
/// start of the largest handshake message TLS allows (rustls buffers it
/// while it waits for the rest), then the largest control packets the
/// gateway takes, out of order (message id `in_order + 1` never comes), so
/// that its reliability layer holds them too.
fn pending_packets(sid: SessionId) -> Vec<Vec<u8>> {
    // A ClientHello announcing 2^16 - 1 bytes, of which the first 60,000
    // are sent in records of 2^14 bytes: rustls keeps up to 64 KiB of an
    // unfinished handshake message (records included) and refuses more.
    let mut message = vec![1u8, 0, 0xff, 0xff];
    message.resize(60_000, 0x41);
    let mut tls = Vec::new();
    for record in message.chunks(1 << 14) {
        tls.extend_from_slice(&[0x16, 3, 1]);
        tls.extend_from_slice(&(record.len() as u16).to_be_bytes());
        tls.extend_from_slice(record);
    }
    let mut chunks: Vec<(u32, Vec<u8>)> = tls
        .chunks(MAX_RECEIVED_PAYLOAD)
        .enumerate()
        .map(|(i, c)| (i as u32 + 1, c.to_vec()))
        .collect();
    let next = chunks.len() as u32 + 1;
    for id in next + 1..next + 12 {
        chunks.push((id, vec![0x16; MAX_RECEIVED_PAYLOAD]));
    }
    chunks
        .into_iter()
        .map(|(id, payload)| {
            let mut p = Vec::new();
            ControlPacket {
                opcode: CONTROL_V1,
                key_id: 0,
                session_id: sid,
                acks: Acks::default(),
                remote_session_id: None,
                message_id: Some(id),
                payload: &payload,
            }
            .encode(&mut p);
            p
        })
        .collect()
}

/// pending --connect ADDR --count N [--hold S]: N connections that stay
/// in their handshake holding as much of the gateway's memory as a
/// client can make it hold (pending_packets), for S seconds.
fn pending(args: &[String]) -> Result<(), String> {
    let to = arg(args, "--connect")?;
    let count = num(args, "--count", 1000).min(5000);
    let hold = Duration::from_secs(num(args, "--hold", 10).min(300));
    let mut open = Vec::new();
    for _ in 0..count {
        let Ok(mut s) = TcpStream::connect(&to) else {
            continue;
        };
        let sid = new_sid();
        let mut ok = write_packet(&mut s, &reset(sid)).is_ok();
        for p in pending_packets(sid) {
            ok &= write_packet(&mut s, &p).is_ok();
        }
        if ok {
            open.push(s);
        }
    }
    println!("pending {}", open.len());
    let _ = std::io::stdout().flush();
    std::thread::sleep(hold);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("close-notify") => close_notify(&args),
        Some("pending") => pending(&args),
        _ => Err("usage: cvpn-e2e-ovpn close-notify|pending ...".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cvpn-e2e-ovpn: {e}");
            ExitCode::FAILURE
        }
    }
}
