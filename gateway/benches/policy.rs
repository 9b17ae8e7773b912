//! Per-packet policy cost (anti-spoofing, route lookup, authorization) with
//! the managed service's quotas filled (200 authorization rules, 100
//! routes, 50 groups) against one rule and one route. Prints nanoseconds
//! per packet; `cargo bench -p cvpn-gw --bench policy`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use cvpn_gw::config::Config;
use cvpn_gw::policy::{Policy, Verdict};

fn config(routes: usize, rules: usize, groups: usize) -> Config {
    let mut text = String::from(
        "listen = \"0.0.0.0:443\"\nclient_cidr = \"10.250.0.0/22\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n\
         [[target_networks]]\nid = \"tn\"\ninterface = \"eth1\"\nvpc_cidr = \"192.168.0.0/16\"\n",
    );
    // Routes of varied prefix lengths, as real route tables have.
    for i in 0..routes.saturating_sub(1) {
        let len = [16, 20, 24][i % 3];
        text += &format!("[[routes]]\ndestination = \"10.{i}.0.0/{len}\"\ntarget = \"tn\"\n");
    }
    for i in 0..rules {
        let g = i % groups.max(1);
        let dest = if i == 0 {
            "192.168.0.0/16".to_string()
        } else {
            format!(
                "10.{}.{}.0/{}",
                i % 100,
                i / 100 * 16,
                [20, 24][i / 100 % 2]
            )
        };
        text += &format!(
            "[[authorization_rules]]\ndestination = \"{dest}\"\naccess_group = \"group-{g}\"\n"
        );
    }
    Config::parse(&text, Path::new("/")).unwrap_or_else(|e| panic!("bench config: {e:?}"))
}

fn packet(dst: Ipv4Addr) -> [u8; 60] {
    let mut p = [0u8; 60];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&60u16.to_be_bytes());
    p[12..16].copy_from_slice(&[10, 250, 0, 2]);
    p[16..20].copy_from_slice(&dst.octets());
    p
}

/// Median ns per check over several rounds, cycling through `dsts`.
fn measure(policy: &Policy, groups: &[String], dsts: &[Ipv4Addr]) -> (f64, usize) {
    let me = Ipv4Addr::new(10, 250, 0, 2);
    let mask = policy.group_mask(groups);
    let packets: Vec<[u8; 60]> = dsts.iter().map(|d| packet(*d)).collect();
    let forwarded = packets
        .iter()
        .filter(|p| matches!(policy.check(*p, me, "bench", mask), Verdict::Forward(_)))
        .count();
    let n = 2_000_000;
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                black_box(policy.check(black_box(&packets[i % packets.len()]), me, "bench", mask));
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    (rounds[rounds.len() / 2], forwarded)
}

fn main() {
    let dsts: Vec<Ipv4Addr> = (0..1024u32)
        .map(|i| match i % 4 {
            0 => Ipv4Addr::new(192, 168, (i / 4 % 256) as u8, 7),
            1 => Ipv4Addr::new(10, (i % 100) as u8, (i % 256) as u8, 9),
            2 => Ipv4Addr::new(10, (i % 7) as u8, 16, 1),
            _ => Ipv4Addr::new(172, 16, 0, (i % 256) as u8),
        })
        .collect();
    let groups: Vec<String> = vec!["group-3".into(), "group-17".into(), "group-0".into()];
    let small = Policy::compile(&config(1, 1, 1)).expect("policy");
    let full = Policy::compile(&config(100, 200, 50)).expect("policy");
    let (one, fwd_one) = measure(&small, &groups, &dsts);
    let (quota, fwd_full) = measure(&full, &groups, &dsts);
    println!(
        "per-packet policy check (anti-spoofing + route lookup + authorization), median of 7 rounds:"
    );
    println!(
        "  1 route, 1 rule, 1 group:          {one:6.1} ns/packet ({fwd_one}/{} destinations forwarded)",
        dsts.len()
    );
    println!(
        "  100 routes, 200 rules, 50 groups:  {quota:6.1} ns/packet ({fwd_full}/{} destinations forwarded)",
        dsts.len()
    );
    println!("  ratio: {:.2}x", quota / one);
    // At the measured single-stream rate a 64 KB offload frame is one check;
    // for unsegmented 1500-byte packets, one check per 1500 bytes.
    for gbps in [1.0f64, 5.0] {
        let pps = gbps * 1e9 / 8.0 / 1500.0;
        println!(
            "  at {gbps} Gbit/s of 1500-byte packets: {:.2}% of one core",
            pps * quota / 1e9 * 100.0
        );
    }
}
