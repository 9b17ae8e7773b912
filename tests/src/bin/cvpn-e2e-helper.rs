//! Test helper run inside the test namespaces: a TCP source that sends a
//! deterministic byte stream and reports who connected, and a fetcher that
//! checks the stream byte for byte; with `--upload` the fetcher sends and
//! the source checks; a flood of bare TCP connects; a flood of OpenVPN
//! resets over UDP; UDP datagrams to many ports (one flow each); numbered
//! datagrams of one flow and a receiver that counts those out of order.
//! All stop by themselves.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn byte_at(i: u64, seed: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// serve --listen ADDR --bytes N --seed S --timeout SECS [--upload]
fn serve(args: &[String]) -> Result<(), String> {
    let listen = arg(args, "--listen").ok_or("--listen missing")?;
    let bytes = num(args, "--bytes", 1_000_000);
    let seed = num(args, "--seed", 1);
    let deadline = Instant::now() + Duration::from_secs(num(args, "--timeout", 60));
    let listener = TcpListener::bind(&listen).map_err(|e| format!("bind {listen}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    println!("listening {listen}");
    let _ = std::io::stdout().flush();
    let (mut sock, peer) = loop {
        match listener.accept() {
            Ok(x) => break x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    sock.set_nonblocking(false).map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    println!("peer={}", peer.ip());
    println!("peer-port={}", peer.port());
    // The segment size the client's SYN allowed (after any clamping on
    // the way), as this end sends with it.
    if let Ok(mss) = socket2::SockRef::from(&sock).tcp_mss() {
        println!("mss={mss}");
    }
    let _ = std::io::stdout().flush();
    if args.iter().any(|a| a == "--upload") {
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        check_stream(&mut sock, bytes, seed)?;
        println!("ok {bytes} bytes from {}", peer.ip());
        return Ok(());
    }
    send_stream(&mut sock, bytes, seed)
}

fn send_stream(sock: &mut TcpStream, bytes: u64, seed: u64) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = byte_at(sent + k as u64, seed);
        }
        sock.write_all(&buf[..n])
            .map_err(|e| format!("send: {e}"))?;
        sent += n as u64;
    }
    Ok(())
}

/// Reads the stream to its end and checks every byte and the length.
fn check_stream(sock: &mut TcpStream, bytes: u64, seed: u64) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = sock
            .read(&mut buf)
            .map_err(|e| format!("read after {got} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            if *b != byte_at(got + k as u64, seed) {
                return Err(format!("byte {} differs", got + k as u64));
            }
        }
        got += n as u64;
    }
    if got != bytes {
        return Err(format!("got {got} bytes, expected {bytes}"));
    }
    Ok(())
}

/// fetch --connect HOST:PORT --bytes N --seed S --timeout SECS [--upload]
fn fetch(args: &[String]) -> Result<(), String> {
    let target = arg(args, "--connect").ok_or("--connect missing")?;
    let bytes = num(args, "--bytes", 1_000_000);
    let seed = num(args, "--seed", 1);
    let timeout = Duration::from_secs(num(args, "--timeout", 30));
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("resolve {target}: {e}"))?
        .next()
        .ok_or(format!("{target}: no address"))?;
    let mut sock =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    if args.iter().any(|a| a == "--upload") {
        sock.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        send_stream(&mut sock, bytes, seed)?;
        sock.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        // The source closes once it has checked everything.
        let _ = sock.read(&mut [0u8; 1]);
        println!("sent {bytes} bytes to {addr}");
        return Ok(());
    }
    check_stream(&mut sock, bytes, seed)?;
    println!("ok {bytes} bytes from {addr}");
    Ok(())
}

/// flood --connect ADDR --count N: N bare TCP connects, each closed at
/// once, as fast as they go (at most 60 s); prints how many connected.
fn flood(args: &[String]) -> Result<(), String> {
    let target = arg(args, "--connect").ok_or("--connect missing")?;
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or("no address")?;
    let count = num(args, "--count", 1000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut connected = 0u64;
    for _ in 0..count {
        if Instant::now() > deadline {
            break;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            connected += 1;
        }
    }
    println!("flood done: {connected} of {count} connected");
    Ok(())
}

/// reset-flood --to ADDR --rate N --seconds S: OpenVPN client resets
/// (14 bytes, a new session id each, no handshake after) over UDP at N per
/// second for S seconds (at most 120), from new source ports; prints how
/// many went.
fn reset_flood(args: &[String]) -> Result<(), String> {
    let to = arg(args, "--to").ok_or("--to missing")?;
    let rate = num(args, "--rate", 20).clamp(1, 10_000);
    let secs = num(args, "--seconds", 10).min(120);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        // Opcode 7 (hard reset client v2), key id 0; a session id; no
        // acks; message id 0.
        let mut reset = vec![7 << 3];
        reset.extend_from_slice(&(sent + 1).to_be_bytes());
        reset.extend_from_slice(&[0, 0, 0, 0, 0]);
        let _ = sock.send_to(&reset, &to);
        sent += 1;
        let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    println!("reset flood done: {sent} sent");
    Ok(())
}

/// spray --to IP --flows N --rate PER_SECOND: one UDP datagram to each
/// of N distinct (source port, destination port) pairs, paced; prints how
/// many were sent.
fn spray(args: &[String]) -> Result<(), String> {
    let to: std::net::Ipv4Addr = arg(args, "--to")
        .ok_or("--to missing")?
        .parse()
        .map_err(|e| format!("--to: {e}"))?;
    let flows = num(args, "--flows", 1000);
    let rate = num(args, "--rate", 10_000).max(1);
    // 50,000 destination ports per source socket.
    let per_socket = 50_000u64;
    let sockets: Vec<std::net::UdpSocket> = (0..flows.div_ceil(per_socket))
        .map(|_| std::net::UdpSocket::bind("0.0.0.0:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bind: {e}"))?;
    let start = Instant::now();
    let mut sent = 0u64;
    for i in 0..flows {
        let socket = &sockets[(i / per_socket) as usize];
        let port = 10_000 + (i % per_socket) as u16;
        if socket.send_to(b"flow", (to, port)).is_ok() {
            sent += 1;
        }
        if i % 100 == 99 {
            let due = start + Duration::from_secs_f64((i + 1) as f64 / rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    println!(
        "sprayed {sent} flows in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// numbered --to ADDR --count N --rate PER_SECOND: N UDP datagrams of
/// 1,000 bytes from one socket (one flow), each starting with its number,
/// paced; prints how many were sent.
fn numbered(args: &[String]) -> Result<(), String> {
    let to = arg(args, "--to").ok_or("--to missing")?;
    let count = num(args, "--count", 1000);
    let rate = num(args, "--rate", 1000).max(1);
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut datagram = [0u8; 1000];
    for i in 0..count {
        datagram[..8].copy_from_slice(&i.to_be_bytes());
        if socket.send_to(&datagram, to.as_str()).is_ok() {
            sent += 1;
        }
        let due = start + Duration::from_secs_f64((i + 1) as f64 / rate as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    println!("sent {sent}");
    Ok(())
}

/// in-order --listen ADDR --count N --timeout SECS: receives numbered
/// datagrams until N came or none came for a second (after the first, or
/// SECS passed); prints how many came and how many came after a higher
/// number (out of order).
fn in_order(args: &[String]) -> Result<(), String> {
    let listen = arg(args, "--listen").ok_or("--listen missing")?;
    let count = num(args, "--count", 1000);
    let deadline = Instant::now() + Duration::from_secs(num(args, "--timeout", 30));
    let socket = std::net::UdpSocket::bind(&listen).map_err(|e| format!("bind {listen}: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    println!("listening {listen}");
    let _ = std::io::stdout().flush();
    let (mut received, mut reordered, mut highest) = (0u64, 0u64, None::<u64>);
    let mut last_heard = Instant::now();
    let mut buf = [0u8; 2048];
    while received < count && Instant::now() < deadline {
        if received > 0 && last_heard.elapsed() > Duration::from_secs(1) {
            break;
        }
        let Ok((n, _)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Some(number) = buf.get(..8.min(n)).and_then(|b| b.try_into().ok()) else {
            continue;
        };
        let number = u64::from_be_bytes(number);
        last_heard = Instant::now();
        received += 1;
        match highest {
            Some(h) if number < h => reordered += 1,
            _ => highest = Some(number),
        }
    }
    println!("received={received} reordered={reordered}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("serve") => serve(&args),
        Some("fetch") => fetch(&args),
        Some("flood") => flood(&args),
        Some("reset-flood") => reset_flood(&args),
        Some("spray") => spray(&args),
        Some("numbered") => numbered(&args),
        Some("in-order") => in_order(&args),
        _ => Err(
            "usage: cvpn-e2e-helper serve|fetch|flood|reset-flood|spray|numbered|in-order ..."
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cvpn-e2e-helper: {e}");
            ExitCode::FAILURE
        }
    }
}
