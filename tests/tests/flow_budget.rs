//! The flow log's budget: one client opening 100,000 UDP flows in a few
//! seconds gets its flow_log_rate's worth of flow-start lines and
//! flow-summary lines counting the rest (logged plus summarized within 1%
//! of what it sent), while another client's flows in the same seconds
//! are all logged.

use cvpn_e2e::checks::json_lines;
use std::time::{Duration, Instant};

use cvpn_e2e::netns::{Proc, in_ns, sh_ok};
use cvpn_e2e::testbed::{TARGET, Testbed};
use serde_json::Value;

const FLOWS: u64 = 100_000;
const CALM_FLOWS: usize = 30;

fn ingress_packets(tb: &Testbed, who: &str) -> u64 {
    tb.connections()["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["common-name"] == who)
        .and_then(|c| c["ingress-packets"].as_u64())
        .unwrap_or(0)
}

fn spray(tb: &Testbed, i: usize, flows: u64, rate: u64) -> Proc {
    let mut cmd = in_ns(&tb.clients[i], &tb.helper());
    cmd.args(["spray", "--to", TARGET, "--flows", &flows.to_string()]);
    cmd.args(["--rate", &rate.to_string()]);
    Proc::spawn(&format!("spray {i}"), cmd)
}

#[test]
fn one_client_cannot_flood_the_flow_log() {
    let tb = Testbed::new("flowbudget", 2);
    let flows = tb.path("flows.jsonl");
    let config = tb.write_config(
        &format!(
            "flow_log = \"{}\"\nmetrics_listen = \"127.0.0.1:9477\"",
            flows.display()
        ),
        "[[authorization_rules]]\ndestination = \"0.0.0.0/0\"\n",
    );
    let _gw = tb.start_gateway(&config);
    let flood = tb.client_profile("flood", &[], 0);
    let calm = tb.client_profile("calm", &[], 1);
    let _flood = tb.connect(0, &flood);
    let _calm = tb.connect(1, &calm);
    let before = ingress_packets(&tb, "flood");
    let size_before = std::fs::metadata(&flows).map(|m| m.len()).unwrap_or(0);

    let started = Instant::now();
    let mut sprayer = spray(&tb, 0, FLOWS, 25_000);
    let mut quiet = spray(&tb, 1, CALM_FLOWS as u64, 10);
    sprayer.wait_for("sprayed", 60);
    quiet.wait_for("sprayed", 60);
    let seconds = started.elapsed().as_secs_f64();
    let opened = ingress_packets(&tb, "flood") - before;
    assert!(
        opened > FLOWS * 9 / 10,
        "the flood reached the gateway: {opened}"
    );

    // Wait (bounded) for the summaries of the flood's windows.
    let counted = |all: &[Value]| {
        let mine = |l: &&Value| l["common-name"] == "flood";
        let logged = all
            .iter()
            .filter(mine)
            .filter(|l| l["flow-log-type"] == "flow-start")
            .count() as u64;
        let summarized: u64 = all
            .iter()
            .filter(mine)
            .filter(|l| l["flow-log-type"] == "flow-summary")
            .filter_map(|l| l["flows"].as_u64())
            .sum();
        (logged, summarized)
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let (logged, summarized) = loop {
        let (logged, summarized) = counted(&json_lines(&flows));
        if logged + summarized >= opened * 99 / 100 || Instant::now() > deadline {
            break (logged, summarized);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let all = json_lines(&flows);
    let total = logged + summarized;
    let metrics = sh_ok(&tb.gateway, "curl -s http://127.0.0.1:9477/metrics");
    assert!(
        total.abs_diff(opened) <= opened / 100,
        "logged {logged} + summarized {summarized} vs {opened} flows opened\n{metrics}\n{}",
        sh_ok(
            &tb.gateway,
            "conntrack -S 2>/dev/null; cat /proc/net/stat/nf_conntrack | head -3"
        )
    );
    // The burst plus the rate over the flood's seconds.
    let starts: Vec<i64> = all
        .iter()
        .filter(|l| l["common-name"] == "flood" && l["flow-log-type"] == "flow-start")
        .filter_map(|l| l["start"].as_i64())
        .collect();
    let span = starts.iter().max().unwrap() - starts.iter().min().unwrap() + 1;
    assert!(
        logged <= 200 + 50 * span as u64,
        "{logged} start lines over {span} s"
    );
    let summary = all
        .iter()
        .find(|l| l["flow-log-type"] == "flow-summary")
        .expect("a summary");
    assert_eq!(summary["common-name"], "flood");
    assert!(
        summary["target-networks"]["tn-a"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    // Every flow of the other client is there.
    let calm_ports: std::collections::BTreeSet<u64> = all
        .iter()
        .filter(|l| l["common-name"] == "calm" && l["flow-log-type"] == "flow-start")
        .filter_map(|l| l["dstport"].as_u64())
        .collect();
    assert_eq!(calm_ports.len(), CALM_FLOWS, "{calm_ports:?}");
    let suppressed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cvpn_flow_log_suppressed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(suppressed, summarized, "{metrics}");
    let grown = std::fs::metadata(&flows).map(|m| m.len()).unwrap_or(0) - size_before;
    eprintln!(
        "flood: {opened} flows in {seconds:.1} s; flow log grew {grown} bytes \
         ({logged} start lines, {summarized} flows summarized)"
    );
}
