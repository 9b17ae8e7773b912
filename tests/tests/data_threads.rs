//! Several packet threads (`data_threads = 3`) with stock openvpn clients
//! and cvpn clients over UDP at once: the layout is visible in
//! `connections --json`, every flow arrives in order, uploads coalesced
//! on their way to the tun device arrive byte-exact, and every counter is
//! exact: each session's against its client's tun device, the threads'
//! datagrams against the gateway's UDP stack. Over the TLS stream alone,
//! sessions spread over the threads' tun queues.

use std::collections::BTreeMap;

use cvpn_e2e::checks::udp_counters;
use cvpn_e2e::netns::{Proc, in_ns, sh_ok};
use cvpn_e2e::openvpn::openvpn;
use cvpn_e2e::testbed::{TARGET, Testbed};

const ALL_USERS: &str = r#"
[[authorization_rules]]
destination = "0.0.0.0/0"
"#;

const THREADS: usize = 3;
const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// (tx_packets, tx_bytes, rx_packets, rx_bytes) of `dev` in `ns`.
fn device_counters(ns: &str, dev: &str) -> [u64; 4] {
    ["tx_packets", "tx_bytes", "rx_packets", "rx_bytes"].map(|c| {
        sh_ok(ns, &format!("cat /sys/class/net/{dev}/statistics/{c}"))
            .trim()
            .parse()
            .expect("a device counter")
    })
}

/// Each session's (ingress-packets, ingress-bytes, egress-packets,
/// egress-bytes), by common name.
fn session_counters(tb: &Testbed) -> BTreeMap<String, [u64; 4]> {
    let v = tb.connections();
    v["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            let n = |k: &str| c[k].as_u64().expect(k);
            (
                c["common-name"].as_str().unwrap_or("").to_string(),
                [
                    n("ingress-packets"),
                    n("ingress-bytes"),
                    n("egress-packets"),
                    n("egress-bytes"),
                ],
            )
        })
        .collect()
}

/// The sum over the packet threads of `key`.
fn threads_sum(tb: &Testbed, key: &str) -> u64 {
    tb.connections()["data-threads"]
        .as_array()
        .expect("data-threads")
        .iter()
        .map(|t| t[key].as_u64().expect(key))
        .sum()
}

fn delta(after: [u64; 4], before: [u64; 4]) -> [u64; 4] {
    std::array::from_fn(|i| after[i] - before[i])
}

#[test]
fn several_data_threads_keep_flows_in_order_and_count_exactly() {
    let tb = Testbed::new("dthreads", NAMES.len());
    let config = tb.write_config(
        &format!("transport_protocol = \"udp\"\ndata_threads = {THREADS}"),
        ALL_USERS,
    );
    let gw = tb.start_gateway(&config);
    let profiles: Vec<_> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| tb.client_profile(n, &[], i))
        .collect();
    // Two stock openvpn clients over UDP, two cvpn clients with their
    // datagram channel.
    let _o0 = openvpn(&tb, &gw, 0, &profiles[0], &[]);
    let _o1 = openvpn(&tb, &gw, 1, &profiles[1], &[]);
    let mut c2 = tb.connect(2, &profiles[2]);
    let mut c3 = tb.connect(3, &profiles[3]);
    c2.wait_for("datagram path up", 10);
    c3.wait_for("datagram path up", 10);
    let device = |i: usize| if i < 2 { "tun0" } else { "cvpn0" };

    // The layout: one row per thread, each with its tun queue.
    let v = tb.connections();
    let rows = v["data-threads"].as_array().expect("data-threads");
    assert_eq!(rows.len(), THREADS, "{v}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(
            (r["thread"].as_u64(), r["tun-queue"].as_u64()),
            (Some(i as u64), Some(i as u64))
        );
    }
    let queues = sh_ok(&tb.gateway, "ls /sys/class/net/cvpn-gw0/queues");
    assert_eq!(queues.matches("rx-").count(), THREADS, "{queues}");

    // Uploads from every client at once, checked byte for byte at the
    // target: segments coalesced into offload frames arrive intact.
    std::thread::scope(|s| {
        for (i, c) in tb.clients.iter().enumerate() {
            let tb = &tb;
            s.spawn(move || {
                let (_, target) = tb.transfer(c, 5100 + i as u16, 40 + i as u32, true);
                assert!(target.contains("ok "), "client {i}: {target}");
            });
        }
    });
    assert!(threads_sum(&tb, "coalesced") > 0, "{}", tb.connections());

    // One flow per client at once, 2,000 numbered datagrams each: none
    // out of order.
    let receivers: Vec<Proc> = (0..NAMES.len())
        .map(|i| {
            let mut cmd = in_ns(&tb.target, &tb.helper());
            cmd.args(["in-order", "--listen", &format!("{TARGET}:{}", 6100 + i)]);
            cmd.args(["--count", "2000", "--timeout", "30"]);
            let mut p = Proc::spawn(&format!("in-order {i}"), cmd);
            p.wait_for("listening", 10);
            p
        })
        .collect();
    std::thread::scope(|s| {
        for (i, c) in tb.clients.iter().enumerate() {
            let helper = tb.helper();
            s.spawn(move || {
                sh_ok(
                    c,
                    &format!(
                        "{} numbered --to {TARGET}:{} --count 2000 --rate 4000",
                        helper.display(),
                        6100 + i
                    ),
                )
            });
        }
    });
    for (i, mut r) in receivers.into_iter().enumerate() {
        let out = r.wait_for("received=", 30);
        let received: u64 = out
            .split("received=")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(out.contains("reordered=0"), "client {i}: {out}");
        assert!(received >= 1900, "client {i}: {out}");
    }

    // Counters: pings from every client at once; each session moved
    // exactly what its client's tun device did, and the threads received
    // exactly the datagrams the gateway's UDP stack did.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sessions0 = session_counters(&tb);
    let devices0: Vec<[u64; 4]> = (0..NAMES.len())
        .map(|i| device_counters(&tb.clients[i], device(i)))
        .collect();
    let (udp0, threads0) = (udp_counters(&tb.gateway).0, threads_sum(&tb, "datagrams"));
    std::thread::scope(|s| {
        for c in &tb.clients {
            s.spawn(move || sh_ok(c, &format!("ping -q -c 300 -i 0.005 -s 1200 -W 3 {TARGET}")));
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sessions1 = session_counters(&tb);
    let (udp1, threads1) = (udp_counters(&tb.gateway).0, threads_sum(&tb, "datagrams"));
    for (i, name) in NAMES.iter().enumerate() {
        let dev = delta(device_counters(&tb.clients[i], device(i)), devices0[i]);
        let ses = delta(sessions1[*name], sessions0[*name]);
        assert_eq!(
            ses, dev,
            "{name}: the session's counters against its tun device's"
        );
        assert!(ses[0] >= 300 && ses[2] >= 300, "{name}: {ses:?}");
    }
    assert_eq!(
        threads1 - threads0,
        udp1 - udp0,
        "datagrams received by the threads"
    );
    assert!(threads1 - threads0 >= 4 * 300, "{}", threads1 - threads0);
}

/// With transport_protocol = "tcp" the packet threads read the tun
/// device alone: each stream session's writes go to the queue its
/// address picks, so three sessions with neighbouring addresses have
/// their downloads read by three threads, byte-exact.
#[test]
fn stream_sessions_spread_over_the_tun_queues() {
    let tb = Testbed::new("dthreads-tcp", 3);
    let config = tb.write_config(&format!("data_threads = {THREADS}"), ALL_USERS);
    let _gw = tb.start_gateway(&config);
    let _clients: Vec<Proc> = (0..3)
        .map(|i| tb.connect(i, &tb.client_profile(NAMES[i], &[], i)))
        .collect();
    let before: Vec<u64> = tun_reads(&tb);
    std::thread::scope(|s| {
        for (i, c) in tb.clients.iter().enumerate() {
            let tb = &tb;
            s.spawn(move || {
                let (client, _) = tb.transfer(c, 5200 + i as u16, 60 + i as u32, false);
                assert!(client.contains("ok "), "client {i}: {client}");
            });
        }
    });
    let after = tun_reads(&tb);
    let v = tb.connections();
    for (t, (a, b)) in after.iter().zip(&before).enumerate() {
        // 20 MB each: at least 300 frames of 64 KB per thread.
        assert!(a - b > 100, "thread {t} read {} packets: {v}", a - b);
    }
}

/// Packets each packet thread read from its tun queue so far.
fn tun_reads(tb: &Testbed) -> Vec<u64> {
    tb.connections()["data-threads"]
        .as_array()
        .expect("data-threads")
        .iter()
        .map(|t| t["tun-reads"].as_u64().expect("tun-reads"))
        .collect()
}
