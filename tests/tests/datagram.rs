//! The datagram channel end to end: `transport_protocol = "udp"` on the
//! endpoint and `proto udp` in the profile put small packets on UDP, big
//! transfers still arrive byte-exact, garbage datagrams change nothing, and
//! when UDP is blocked the session carries on over its TLS stream.

use cvpn_e2e::checks::udp_counters;
use cvpn_e2e::netns::sh_ok;
use cvpn_e2e::testbed::{TARGET, Testbed};

const ALL_USERS: &str = r#"
[[authorization_rules]]
destination = "0.0.0.0/0"
"#;

#[test]
fn small_packets_take_udp_and_the_stream_takes_over_when_udp_is_blocked() {
    let tb = Testbed::new("dgram", 1);
    let config = tb.write_config("transport_protocol = \"udp\"", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    let profile = tb.client_profile("alice", &[], 0);
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("\nproto udp\n"), "{text}");
    let c = &tb.clients[0];
    let mut client = tb.connect(0, &profile);
    client.wait_for("datagram path up", 10);

    // Pings cross as datagrams both ways.
    let (in0, out0) = udp_counters(&tb.gateway);
    sh_ok(c, &format!("ping -c 20 -i 0.05 -W 3 {TARGET}"));
    let (in1, out1) = udp_counters(&tb.gateway);
    assert!(in1 - in0 >= 20, "gateway received {} datagrams", in1 - in0);
    assert!(out1 - out0 >= 20, "gateway sent {} datagrams", out1 - out0);

    // Bulk both ways, with small packets on UDP and big ones on the
    // stream: still byte-exact, from the ENI address.
    cvpn_e2e::checks::transfers_both_ways_from_eni(&tb, c, 5011, (3, 4));

    // Garbage at the datagram port: no session id it knows, short, empty.
    sh_ok(
        c,
        "bash -c 'for i in 1 2 3 4 5; do head -c 200 /dev/urandom > /dev/udp/198.18.0.1/443; done; \
         printf x > /dev/udp/198.18.0.1/443; : > /dev/udp/198.18.0.1/443'",
    );
    sh_ok(c, &format!("ping -c 3 -W 3 {TARGET}"));

    // The connection log names the transport.
    let log = std::fs::read_to_string(tb.connection_log()).unwrap();
    assert!(
        log.contains(r#""transport-protocol":"udp""#),
        "connection log: {log}"
    );

    // UDP blocked: once the probes go unanswered the client says so, and
    // everything takes the TLS stream.
    sh_ok(
        &tb.gateway,
        "nft add table inet block && \
         nft add chain inet block in '{ type filter hook input priority 0; }' && \
         nft add rule inet block in udp dport 443 drop",
    );
    client.wait_for("datagram path down", 25);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (_, out2) = udp_counters(&tb.gateway);
    let pings = sh_ok(c, &format!("ping -c 5 -i 0.2 -W 3 {TARGET}"));
    assert!(pings.contains("5 received"), "{pings}");
    let (_, out3) = udp_counters(&tb.gateway);
    assert!(
        out3 - out2 <= 1,
        "gateway still sent {} datagrams",
        out3 - out2
    );

    assert_eq!(client.stop(), 0, "{}", client.output());
}

#[test]
fn a_gateway_on_every_address_answers_from_the_one_the_client_used() {
    let tb = Testbed::new("pktinfo", 1);
    // A second address on the client-facing interface: replies routed by
    // the kernel alone would leave from 198.18.0.1, which the client's
    // connected UDP socket drops.
    sh_ok(&tb.gateway, "ip addr add 198.18.0.100/24 dev gc0");
    let config = tb.write_config("transport_protocol = \"udp\"", ALL_USERS);
    let _gw = tb.start_gateway(&config);
    tb.pki.ok(&["issue", "client", "alice"]);
    let profile = tb.export_profile("alice", 0);
    let text = std::fs::read_to_string(&profile)
        .unwrap()
        .replace("remote 198.18.0.1 443", "remote 198.18.0.100 443");
    std::fs::write(&profile, text).unwrap();
    let mut client = tb.connect(0, &profile);
    client.wait_for("datagram path up", 10);
    let (in0, out0) = udp_counters(&tb.gateway);
    sh_ok(&tb.clients[0], &format!("ping -c 10 -i 0.05 -W 3 {TARGET}"));
    let (in1, out1) = udp_counters(&tb.gateway);
    assert!(in1 - in0 >= 10, "gateway received {} datagrams", in1 - in0);
    assert!(out1 - out0 >= 10, "gateway sent {} datagrams", out1 - out0);
}
