//! Three gateways, one profile: a cvpn-client and a stock openvpn client
//! on different gateways are both listed by the third; kill -9 of a
//! client's gateway brings it back through another within 10 s with the
//! same address (five times each, the median printed); one etcd member
//! down changes nothing; drain moves every client of a gateway to the
//! others within 3 s and the gateway exits.

use std::time::{Duration, Instant};

use cvpn_e2e::cluster_bed::ClusterBed;
use cvpn_e2e::netns::Proc;

const ROUNDS: usize = 5;

fn index(node: &str) -> usize {
    node.trim_start_matches("gw")
        .parse()
        .expect("a node name gwN")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The live gateway holding `cn`'s session, and its address.
fn holding(bed: &ClusterBed, gws: &[Option<Proc>], cn: &str) -> Option<(usize, String)> {
    (0..gws.len())
        .filter(|g| gws[*g].is_some())
        .find_map(|g| bed.holds(g, cn).map(|ip| (g, ip)))
}

/// The live gateway holding `cn`'s session, once one does (at most 20 s).
fn held(bed: &ClusterBed, gws: &[Option<Proc>], cn: &str) -> usize {
    let start = Instant::now();
    loop {
        if let Some((g, _)) = holding(bed, gws, cn) {
            return g;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{cn} held nowhere"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls (at most `secs`) until a live gateway other than `left` holds
/// `cn`'s session: which, the address, and how long it took.
fn moved(
    bed: &ClusterBed,
    gws: &[Option<Proc>],
    cn: &str,
    left: usize,
    secs: u64,
) -> (usize, String, Duration) {
    let start = Instant::now();
    loop {
        if let Some((g, ip)) = holding(bed, gws, cn).filter(|(g, _)| *g != left) {
            return (g, ip, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{cn} not moved off gw{left} within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clients_fail_over_and_drain_moves_them() {
    let mut bed = ClusterBed::new("clf", 3, 2);
    for g in 0..3 {
        bed.write_config(g, "transport_protocol = \"udp\"\n");
    }
    let mut gws: Vec<Option<Proc>> = (0..3).map(|g| Some(bed.start(g))).collect();

    // One profile per user, listing every node.
    let carol = bed.profile("carol");
    let text = std::fs::read_to_string(&carol).unwrap();
    for g in 0..3 {
        let remote = ClusterBed::advertise(g).replace(':', " ");
        assert!(text.contains(&format!("remote {remote}\n")), "{text}");
    }
    assert!(
        text.contains("remote-random\n") && text.contains("server-poll-timeout "),
        "{text}"
    );
    let dave = bed.profile("dave");

    // carol (cvpn-client) anywhere; dave (openvpn) kept off her gateway.
    let mut _carol = bed.cvpn_client(0, &carol);
    let (carol_node, carol_ip) = bed.holder(0, "carol", None).expect("carol listed");
    bed.cut(1, index(&carol_node), true);
    let mut _dave = bed.openvpn(1, &dave);
    bed.cut(1, index(&carol_node), false);
    let (dave_node, dave_ip) = bed.holder(0, "dave", None).expect("dave listed");
    eprintln!(
        "carol on {carol_node}, dave on {dave_node}: {}",
        bed.connections(0)
    );
    assert_ne!(carol_node, dave_node);
    let third = (0..3)
        .find(|g| *g != index(&carol_node) && *g != index(&dave_node))
        .unwrap();
    let listed = bed.connections(third);
    assert_eq!(
        bed.holder(third, "carol", None),
        Some((carol_node, carol_ip.clone())),
        "{listed}"
    );
    assert_eq!(
        bed.holder(third, "dave", None),
        Some((dave_node, dave_ip.clone())),
        "{listed}"
    );

    // kill -9 of each one's gateway, five times.
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (who, (cn, i, ip)) in [("carol", 0, &carol_ip), ("dave", 1, &dave_ip)]
            .into_iter()
            .enumerate()
        {
            // Both settled (a kill may have moved the other one too).
            let g = held(&bed, &gws, cn);
            held(&bed, &gws, if cn == "carol" { "dave" } else { "carol" });
            let mut victim = gws[g].take().unwrap();
            eprintln!(
                "{:?}: kill -9 gw{g}, which holds {cn}",
                time::OffsetDateTime::now_utc().time()
            );
            victim.signal("KILL");
            let killed = Instant::now();
            let _ = victim.wait(5);
            let back = bed.until_reaches(i, 15).map(|_| killed.elapsed());
            let back = back.unwrap_or_else(|| panic!("{cn} not back within 15 s"));
            let (_, addr, _) = moved(&bed, &gws, cn, g, 5);
            assert_eq!(&addr, ip, "{cn} keeps its address");
            assert!(back <= Duration::from_secs(10), "{cn} back after {back:?}");
            times[who].push(back);
            gws[g] = Some(bed.start(g));
        }
    }
    eprintln!(
        "fail-over after kill -9 (median of {ROUNDS}): cvpn-client {:?} {:?}, openvpn (UDP) {:?} {:?}",
        median(times[0].clone()),
        times[0],
        median(times[1].clone()),
        times[1]
    );

    // One etcd member of three down: nothing visible changes.
    bed.etcd.members[0].stop();

    // Drain carol's gateway, then dave's: each client is moved within
    // 3 s, keeps its address, and the drained gateway exits.
    for (cn, i, ip) in [("carol", 0, &carol_ip), ("dave", 1, &dave_ip)] {
        let g = held(&bed, &gws, cn);
        let started = Instant::now();
        let mut drain = Proc::spawn("cvpn-gw drain", {
            let mut c = std::process::Command::new(cvpn_e2e::bin("cvpn-gw"));
            c.args(["drain", "--timeout", "20s", "--control"])
                .arg(bed.control_socket(g));
            c
        });
        let (_, addr, _) = moved(&bed, &gws, cn, g, 10);
        let took = started.elapsed();
        eprintln!("drain moved {cn} off gw{g} in {took:?}");
        assert_eq!(&addr, ip);
        assert!(took <= Duration::from_secs(3), "{cn} moved after {took:?}");
        assert!(
            bed.until_reaches(i, 10).is_some(),
            "{cn} reaches the target"
        );
        assert_eq!(drain.wait(30), Some(0), "{}", drain.output());
        assert!(
            drain.output().contains("drained: the gateway exited"),
            "{}",
            drain.output()
        );
        let mut gw = gws[g].take().unwrap();
        assert_eq!(gw.wait(10), Some(0), "{}", gw.output());
        assert!(gw.output().contains("drained"), "{}", gw.output());
        gws[g] = Some(bed.start(g));
    }
}
