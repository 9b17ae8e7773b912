//! The flow log: a forwarded TCP connection gets a `flow-start` line naming
//! the user and exactly the source port the target saw, and a `flow-end`
//! line whose bytes match what crossed the target's interface; the sysctl
//! the flow log needs is restored at exit, also after a crash.

use cvpn_e2e::checks::json_lines;
use std::time::{Duration, Instant};

use cvpn_e2e::checks::connection_log;
use cvpn_e2e::netns::sh_ok;
use cvpn_e2e::testbed::{ENI, Testbed};
use serde_json::Value;

const ALL_USERS: &str = "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n";
const PORT: u16 = 5003;

/// The flow's bytes as the target's own interface counted them (IP
/// packets of both directions).
fn counted_on_target(ns: &str) -> u64 {
    let listing = sh_ok(ns, "nft -j list table ip flowcount");
    let v: Value = serde_json::from_str(&listing).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["bytes"].as_u64())
        .sum()
}

fn sysctl(ns: &str, name: &str) -> String {
    sh_ok(ns, &format!("sysctl -n {name}")).trim().to_string()
}

#[test]
fn a_flow_is_logged_with_its_user_and_the_port_the_target_saw() {
    let tb = Testbed::new("flows", 1);
    let flows = tb.path("flows.jsonl");
    let config = tb.write_config(&format!("flow_log = \"{}\"", flows.display()), ALL_USERS);
    let profile = tb.client_profile("frank", &[], 0);
    let c = &tb.clients[0];
    sh_ok(
        &tb.target,
        &format!(
            "nft add table ip flowcount && \
             nft add chain ip flowcount in '{{ type filter hook input priority 0; }}' && \
             nft add rule ip flowcount in tcp dport {PORT} counter && \
             nft add chain ip flowcount out '{{ type filter hook output priority 0; }}' && \
             nft add rule ip flowcount out tcp sport {PORT} counter"
        ),
    );
    let mut gw = tb.start_gateway(&config);
    assert_eq!(sysctl(&tb.gateway, "net.netfilter.nf_conntrack_acct"), "1");
    // The test's own namespace: a closed connection leaves conntrack in a
    // second rather than after TIME_WAIT's two minutes.
    sh_ok(
        &tb.gateway,
        "sysctl -w net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
    );
    let _client = tb.connect(0, &profile);
    let address = tb.addresses()["frank"].clone();
    let (fetched, seen) = tb.transfer(c, PORT, 3, false);
    assert!(fetched.contains("ok 20000000 bytes"), "{fetched}");
    assert!(seen.contains(&format!("peer={ENI}\n")), "{seen}");
    let port: u64 = seen
        .lines()
        .find_map(|l| l.strip_prefix("peer-port="))
        .expect("the target printed the peer's port")
        .parse()
        .unwrap();

    let ours = |l: &Value| l["dstport"] == PORT && l["protocol"] == 6;
    let start = json_lines(&flows)
        .into_iter()
        .find(|l| ours(l) && l["flow-log-type"] == "flow-start")
        .unwrap_or_else(|| panic!("no flow-start line: {:?}", json_lines(&flows)));
    assert_eq!(start["common-name"], "frank");
    assert_eq!(start["srcaddr"], ENI);
    assert_eq!(start["srcport"], port, "{start}");
    assert_eq!(start["pkt-srcaddr"], address.as_str());
    assert_eq!(start["target-network"], "tn-a");
    let session = connection_log(&tb)
        .into_iter()
        .find(|r| r["common-name"] == "frank")
        .expect("a connection log record");
    assert_eq!(start["connection-id"], session["connection-id"]);

    let waited = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    let end = loop {
        if let Some(end) = json_lines(&flows)
            .into_iter()
            .find(|l| ours(l) && l["flow-log-type"] == "flow-end")
        {
            break end;
        }
        assert!(
            Instant::now() < deadline,
            "no flow-end line: {:?}",
            json_lines(&flows)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(end["srcport"], port);
    assert_eq!(end["common-name"], "frank");
    let bytes = end["bytes"].as_u64().unwrap();
    let counted = counted_on_target(&tb.target);
    eprintln!(
        "flow-end {:.1} s after the transfer; bytes {bytes}, the target counted {counted}",
        waited.elapsed().as_secs_f64()
    );
    let off = (bytes as f64 - counted as f64).abs() / counted as f64;
    assert!(
        off <= 0.05,
        "flow-end bytes {bytes}, the target counted {counted}"
    );
    assert!(bytes >= 20_000_000, "{bytes}");
    assert!(end["packets"].as_u64().unwrap() > 0);
    assert!(end["end"].as_i64() >= end["start"].as_i64());

    gw.stop();
    assert_eq!(sysctl(&tb.gateway, "net.netfilter.nf_conntrack_acct"), "0");
    // After a crash, the next run restores what the crashed one changed.
    let mut crashed = tb.start_gateway(&config);
    crashed.signal("KILL");
    crashed.wait(10);
    assert_eq!(sysctl(&tb.gateway, "net.netfilter.nf_conntrack_acct"), "1");
    let mut gw = tb.start_gateway(&config);
    gw.stop();
    assert_eq!(sysctl(&tb.gateway, "net.netfilter.nf_conntrack_acct"), "0");
}
