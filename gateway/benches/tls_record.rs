//! What one small TLS record costs when the tunnel has been idle: the
//! gateway's own rustls configuration (TLS 1.3, aws-lc-rs, mutual
//! authentication with certificates from cvpn-pki), client and server
//! connected in memory, a 104-byte packet frame encrypted by one side and
//! decrypted by the other after 0, 2 and 50 ms without traffic. Prints
//! medians; `cargo bench -p cvpn-gw --bench tls_record`.
//!
//! Also times, after the same pause, the tunnel's own record layer
//! (cvpn_proto::record: what the gateway and client run since they seal
//! records themselves), the AEAD alone (aws-lc-rs AES-256-GCM
//! sealing and opening the frame in place: the least any record path must
//! do) and a 104-byte allocation and copy: the cost of touching memory and
//! code that the pause has let go cold.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cvpn_gw::config::TlsFiles;
use cvpn_pki::store::Request;
use cvpn_pki::{KeyType, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConnection};

const ROUNDS: usize = 41;

fn configs(dir: &std::path::Path) -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    let store = Store::new(dir);
    store.init("Bench CA", 3650, KeyType::EcdsaP256).unwrap();
    let ips = ["127.0.0.1".parse().unwrap()];
    let server = Request::Server {
        dns: &[],
        ips: &ips,
    };
    store.issue("gw", server, 30, None).unwrap();
    store
        .issue("alice", Request::Client { groups: &[] }, 30, None)
        .unwrap();
    let server = cvpn_gw::tls::server_config(&TlsFiles {
        cert: store.cert_path("gw"),
        key: store.key_path("gw"),
        client_ca: store.ca_cert_path(),
        crl: Some(store.crl_path()),
        tls_crypt: None,
        min_version: cvpn_gw::config::TlsVersion::Tls12,
        reneg: cvpn_gw::config::DEFAULT_RENEG,
    })
    .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(cvpn_gw::tls::load_certs(&store.ca_cert_path()).unwrap());
    let chain = vec![CertificateDer::from_pem_file(store.cert_path("alice")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(store.key_path("alice")).unwrap();
    let mut client = ClientConfig::builder_with_provider(cvpn_gw::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    client.alpn_protocols = vec![cvpn_proto::ALPN.to_vec()];
    (server, Arc::new(client))
}

/// Moves whatever `from` has to send into `to`.
fn send(from: &mut Connection, to: &mut Connection) {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).unwrap();
    }
    let mut rest = &wire[..];
    while !rest.is_empty() {
        if to.read_tls(&mut rest).unwrap() == 0 {
            break;
        }
        to.process_new_packets().unwrap();
    }
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

/// Medians in microseconds of (encrypt, decrypt, allocate and copy), each
/// after `pause` without activity.
fn measure(client: &mut Connection, server: &mut Connection, pause: Duration) -> (f64, f64, f64) {
    let frame = [7u8; 104];
    let mut got = [0u8; 256];
    let (mut enc, mut dec, mut alloc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        std::thread::sleep(pause);
        let t0 = Instant::now();
        drop(black_box(frame.to_vec()));
        let t1 = Instant::now();
        client.writer().write_all(&frame).unwrap();
        let mut wire = Vec::with_capacity(256);
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let t2 = Instant::now();
        server.read_tls(&mut &wire[..]).unwrap();
        server.process_new_packets().unwrap();
        assert_eq!(server.reader().read(&mut got).unwrap(), frame.len());
        let t3 = Instant::now();
        alloc.push(t1 - t0);
        enc.push(t2 - t1);
        dec.push(t3 - t2);
    }
    (median(enc), median(dec), median(alloc))
}

/// Medians in microseconds of (seal, open) of the frame in place.
fn measure_aead(pause: Duration) -> (f64, f64) {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9u8; 32]).unwrap());
    let (mut seal, mut open) = (Vec::new(), Vec::new());
    let mut buf = [7u8; 104 + 16];
    for i in 0..ROUNDS as u64 {
        std::thread::sleep(pause);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        let t0 = Instant::now();
        let (data, tag) = buf.split_at_mut(104);
        let t = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), data)
            .unwrap();
        tag.copy_from_slice(t.as_ref());
        let t1 = Instant::now();
        key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .unwrap();
        let t2 = Instant::now();
        seal.push(t1 - t0);
        open.push(t2 - t1);
    }
    (median(seal), median(open))
}

/// Medians in microseconds of (seal, open) of the frame as one record by
/// the tunnel's own record layer (cvpn_proto::record), into and out of a
/// reused buffer as the tunnel does it.
fn measure_record(pause: Duration) -> (f64, f64) {
    use cvpn_proto::record::{self, RecordKey};
    use rustls::ConnectionTrafficSecrets;
    use rustls::crypto::cipher::{AeadKey, Iv};
    let secrets = || ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from([9u8; 32]),
        iv: Iv::from([3u8; 12]),
    };
    let mut tx = RecordKey::new(&secrets(), 0).unwrap();
    let mut rx = RecordKey::new(&secrets(), 0).unwrap();
    let frame = [7u8; 104];
    let mut wire = Vec::with_capacity(4096);
    let (mut seal, mut open) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        std::thread::sleep(pause);
        wire.clear();
        let t0 = Instant::now();
        record::seal(&mut tx, record::APPLICATION_DATA, &frame, &mut wire).unwrap();
        let t1 = Instant::now();
        let (typ, range) = record::open(&mut rx, &mut wire).unwrap();
        let t2 = Instant::now();
        assert_eq!((typ, range.len()), (record::APPLICATION_DATA, frame.len()));
        seal.push(t1 - t0);
        open.push(t2 - t1);
    }
    (median(seal), median(open))
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (server_cfg, client_cfg) = configs(dir.path());
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut client = Connection::Client(ClientConnection::new(client_cfg, name).unwrap());
    let mut server = Connection::Server(ServerConnection::new(server_cfg).unwrap());
    for _ in 0..10 {
        send(&mut client, &mut server);
        send(&mut server, &mut client);
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    println!("One 104-byte frame in one TLS 1.3 record, {ROUNDS} rounds, medians:");
    for ms in [0, 2, 50] {
        let (enc, dec, alloc) = measure(&mut client, &mut server, Duration::from_millis(ms));
        println!(
            "  after {ms:>2} ms idle: encrypt {enc:6.1} us, decrypt {dec:6.1} us, \
             allocate+copy 104 bytes {alloc:5.2} us"
        );
    }
    println!("The AEAD alone (AES-256-GCM in place, aws-lc-rs), medians:");
    for ms in [0, 2, 50] {
        let (seal, open) = measure_aead(Duration::from_millis(ms));
        println!("  after {ms:>2} ms idle: seal {seal:6.1} us, open {open:6.1} us");
    }
    println!("The tunnel's record layer (cvpn_proto::record, the same AEAD), medians:");
    for ms in [0, 2, 50] {
        let (seal, open) = measure_record(Duration::from_millis(ms));
        println!("  after {ms:>2} ms idle: seal {seal:6.1} us, open {open:6.1} us");
    }
}
