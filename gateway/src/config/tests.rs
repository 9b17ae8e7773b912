use super::*;

const GOOD: &str = r#"
listen = "0.0.0.0:443"
client_cidr = "10.250.0.0/22"
dns_servers = ["192.168.1.53"]
session_timeout = "12h"
banner = "Authorized use only."

[tls]
cert = "pki/issued/vpn.crt"
key = "pki/private/vpn.key"
client_ca = "pki/ca.crt"
crl = "/etc/cvpn/crl.pem"

[[target_networks]]
id = "tn-a"
interface = "eth1"
vpc_cidr = "192.168.0.0/16"

[[routes]]
destination = "10.20.0.0/16"
target = "tn-a"

[[routes]]
destination = "10.250.0.0/22"
target = "local"

[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "engineering"

[[authorization_rules]]
destination = "0.0.0.0/0"
"#;

fn parse(text: &str) -> Result<Config, Vec<(String, String)>> {
    Config::parse(text, Path::new("/etc/cvpn"))
}

fn problems(text: &str) -> Vec<(String, String)> {
    parse(text).expect_err("config accepted")
}

#[test]
fn good_config() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.session_timeout, Duration::from_secs(12 * 3600));
    assert!(c.split_tunnel);
    assert_eq!(c.transport_protocol, TransportProtocol::Tcp);
    let udp = GOOD.replace(
        "session_timeout",
        "transport_protocol = \"udp\"\nsession_timeout",
    );
    assert_eq!(
        parse(&udp).unwrap().transport_protocol,
        TransportProtocol::Udp
    );
    assert_eq!(c.tls.cert, PathBuf::from("/etc/cvpn/pki/issued/vpn.crt"));
    assert_eq!(c.tls.crl, Some(PathBuf::from("/etc/cvpn/crl.pem")));
    assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(c.max_sessions_per_identity, 1);
    assert_eq!(c.max_connections, 10_000);
    let limits = GOOD.replace(
        "session_timeout",
        "max_sessions_per_identity = 3\nmax_connections = 50\nstate_dir = \"state\"\nsession_timeout",
    );
    let l = parse(&limits).unwrap();
    assert_eq!((l.max_sessions_per_identity, l.max_connections), (3, 50));
    assert_eq!(l.state_dir, PathBuf::from("/etc/cvpn/state"));
    let routes: Vec<_> = c
        .routes
        .iter()
        .map(|r| (r.destination.to_string(), r.target, r.origin))
        .collect();
    assert_eq!(
        routes,
        vec![
            (
                "192.168.0.0/16".into(),
                RouteTarget::Network(0),
                Origin::Associate
            ),
            (
                "10.20.0.0/16".into(),
                RouteTarget::Network(0),
                Origin::AddRoute
            ),
            ("10.250.0.0/22".into(), RouteTarget::Local, Origin::AddRoute),
        ]
    );
    assert_eq!(c.rules[1].access_group, None);
    assert!(c.target_networks[0].snat);
}

fn with(extra: &str) -> String {
    format!("{GOOD}\n{extra}")
}

#[test]
fn errors_name_their_keys() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            GOOD.replace("/22\"", "/24\""),
            "client_cidr",
            "between /12 and /22",
        ),
        (
            GOOD.replace("10.250.0.0/22\"\ndns", "10.250.0.1/22\"\ndns"),
            "client_cidr",
            "host bits",
        ),
        (
            GOOD.replace(
                "[\"192.168.1.53\"]",
                "[\"1.1.1.1\", \"1.0.0.1\", \"8.8.8.8\"]",
            ),
            "dns_servers",
            "at most 2",
        ),
        (GOOD.replace("12h", "25h"), "session_timeout", "at most 24h"),
        (
            GOOD.replace(
                "session_timeout",
                "transport_protocol = \"quic\"\nsession_timeout",
            ),
            "transport_protocol",
            "expected \"tcp\" or \"udp\"",
        ),
        (
            GOOD.replace("session_timeout", "max_connections = 0\nsession_timeout"),
            "max_connections",
            "between 1 and 1000000",
        ),
        (
            GOOD.replace(
                "session_timeout",
                "max_sessions_per_identity = -1\nsession_timeout",
            ),
            "max_sessions_per_identity",
            "between 1 and 1000000",
        ),
        (
            GOOD.replace("12h", "soon"),
            "session_timeout",
            "not a duration",
        ),
        (
            GOOD.replace("Authorized use only.", &"x".repeat(1401)),
            "banner",
            "at most 1400",
        ),
        (
            with("[[routes]]\ndestination = \"10.30.0.0/16\"\ntarget = \"tn-b\""),
            "routes[2].target",
            "no target network",
        ),
        (
            with("[[routes]]\ndestination = \"10.250.1.0/24\"\ntarget = \"tn-a\""),
            "routes[2].destination",
            "overlaps client_cidr",
        ),
        (
            with("[[routes]]\ndestination = \"10.20.0.0/16\"\ntarget = \"tn-a\""),
            "routes[2].destination",
            "already the destination",
        ),
        (
            with("[[routes]]\ndestination = \"10.0.0.0/8\"\ntarget = \"local\""),
            "routes[2].destination",
            "local route",
        ),
        (
            with(
                "[[target_networks]]\nid = \"tn-a\"\ninterface = \"eth2\"\nvpc_cidr = \"10.250.0.0/16\"",
            ),
            "target_networks[1].id",
            "duplicate",
        ),
        (
            with(
                "[[target_networks]]\nid = \"tn-b\"\ninterface = \"eth2\"\nvpc_cidr = \"10.250.0.0/16\"",
            ),
            "target_networks[1].vpc_cidr",
            "overlaps client_cidr",
        ),
        (
            with(
                "[[authorization_rules]]\ndestination = \"10.0.0.0/8\"\naccess_group = \"x\"\nall_users = true",
            ),
            "authorization_rules[2].all_users",
            "not both",
        ),
    ];
    for (text, key, why) in cases {
        let p = problems(&text);
        assert!(
            p.iter().any(|(k, w)| k == key && w.contains(why)),
            "expected {key}: {why}, got {p:?}"
        );
    }
}

#[test]
fn toml_errors_name_the_key_and_line() {
    let p = problems(&GOOD.replace("listen = \"0.0.0.0:443\"", "listen = \"nowhere\""));
    assert!(
        p[0].1.contains("line 2") && p[0].1.contains("listen"),
        "{p:?}"
    );
    let p = problems(&GOOD.replace("banner =", "baner ="));
    assert!(p[0].1.contains("unknown field `baner`"), "{p:?}");
    let p = problems(&GOOD.replace("[tls]\ncert = \"pki/issued/vpn.crt\"\n", "[tls]\n"));
    assert!(p[0].1.contains("missing field `cert`"), "{p:?}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
    assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
    for bad in ["", "h", "10", "10d", "-1h", "99999999999999999999h"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_example_configuration_is_valid() {
    let text = include_str!("../../../contrib/endpoint.example.toml");
    let c = parse(text).expect("contrib/endpoint.example.toml");
    assert_eq!(c.transport_protocol, TransportProtocol::Udp);
}

#[test]
fn client_networks_are_routes_and_may_overlap_nothing() {
    let site = format!(
        "{GOOD}\n[[client_networks]]\ncommon_name = \"site-b\"\ncidr = \"10.42.0.0/16\"\nreachable_from = [\"tn-a\"]\n"
    );
    let c = parse(&site).unwrap();
    assert_eq!(c.client_networks[0].reachable_from, vec![0]);
    let route = c
        .routes
        .iter()
        .find(|r| r.origin == Origin::ClientNetwork)
        .unwrap();
    assert_eq!(
        (route.destination.to_string(), route.target),
        ("10.42.0.0/16".into(), RouteTarget::ClientNetwork(0))
    );
    // Pushed to everyone but the site itself.
    assert!(c.pushed_routes("alice").contains(&route.destination));
    assert!(!c.pushed_routes("site-b").contains(&route.destination));

    let bad = |cidr: &str, extra: &str| {
        problems(&format!(
            "{GOOD}\n[[client_networks]]\ncommon_name = \"site-b\"\ncidr = \"10.42.0.0/16\"\n\
             [[client_networks]]\ncommon_name = \"site-c\"\ncidr = \"{cidr}\"\n{extra}"
        ))
    };
    let p = bad("10.250.1.0/24", "");
    assert!(
        p.iter()
            .any(|(k, w)| k == "client_networks[1].cidr" && w.contains("client_cidr 10.250.0.0/22")),
        "{p:?}"
    );
    let p = bad("192.168.7.0/24", "");
    assert!(
        p.iter().any(|(k, w)| k == "client_networks[1].cidr"
            && w.contains("target_networks[0] (tn-a) vpc_cidr 192.168.0.0/16")),
        "{p:?}"
    );
    let p = bad("10.42.128.0/17", "");
    assert!(
        p.iter().any(|(k, w)| k == "client_networks[1].cidr"
            && w.contains("client_networks[0] (site-b) cidr 10.42.0.0/16")),
        "{p:?}"
    );
    let p = bad("10.43.0.0/16", "reachable_from = [\"tn-z\"]\n");
    assert!(
        p.iter()
            .any(|(k, w)| k == "client_networks[1].reachable_from" && w.contains("\"tn-z\"")),
        "{p:?}"
    );
    let p = problems(&format!(
        "{GOOD}\n[[client_networks]]\ncommon_name = \"\"\ncidr = \"10.42.0.0/16\"\n"
    ));
    assert!(
        p.iter().any(|(k, _)| k == "client_networks[0].common_name"),
        "{p:?}"
    );
}

#[test]
fn aliased_networks_may_share_a_vpc_cidr() {
    let customer = |n: u8, alias: Option<&str>| {
        let alias = alias
            .map(|a| format!("alias_cidr = \"{a}\"\n"))
            .unwrap_or_default();
        format!(
            "\n[[target_networks]]\nid = \"cust-{n}\"\ninterface = \"eth{n}\"\neni_address = \"10.0.0.10\"\nvpc_cidr = \"10.0.0.0/16\"\n{alias}"
        )
    };
    let both = format!(
        "{GOOD}{}{}",
        customer(2, Some("100.70.0.0/16")),
        customer(3, Some("100.71.0.0/16"))
    );
    let c = parse(&both).unwrap();
    let associated: Vec<String> = c
        .routes
        .iter()
        .filter(|r| r.origin == Origin::Associate)
        .map(|r| r.destination.to_string())
        .collect();
    assert_eq!(
        associated,
        ["192.168.0.0/16", "100.70.0.0/16", "100.71.0.0/16"]
    );

    let p = problems(&format!("{GOOD}{}{}", customer(2, None), customer(3, None)));
    assert!(
        p.iter().any(|(k, w)| k == "target_networks[2]"
            && w.contains("(cust-3)")
            && w.contains("(cust-2)")
            && w.contains("each need an alias_cidr")),
        "{p:?}"
    );
    // An alias must keep the host part: same length.
    let p = problems(&format!("{GOOD}{}", customer(2, Some("100.70.0.0/24"))));
    assert!(
        p.iter()
            .any(|(k, w)| k == "target_networks[1].alias_cidr" && w.contains("1:1")),
        "{p:?}"
    );
    // Aliases may not overlap each other or what clients see elsewhere.
    let p = problems(&format!(
        "{GOOD}{}{}",
        customer(2, Some("100.70.0.0/16")),
        customer(3, Some("100.70.0.0/16"))
    ));
    assert!(p.iter().any(|(k, _)| k == "target_networks[2]"), "{p:?}");
    let p = problems(&format!("{GOOD}{}", customer(2, Some("192.168.0.0/16"))));
    assert!(p.iter().any(|(k, _)| k == "target_networks[1]"), "{p:?}");
    // Routes to an aliased network stay inside its alias.
    let p = problems(&format!(
        "{GOOD}{}\n[[routes]]\ndestination = \"10.30.0.0/16\"\ntarget = \"cust-2\"\n",
        customer(2, Some("100.70.0.0/16"))
    ));
    assert!(
        p.iter()
            .any(|(k, w)| k.ends_with(".destination") && w.contains("outside alias_cidr")),
        "{p:?}"
    );
}

#[test]
fn cluster_table() {
    let with = |table: &str| format!("{GOOD}\n[cluster]\n{table}");
    let c = parse(&with(
        "node = \"gw-a\"\netcd = [\"http://10.0.9.11:2379\", \"https://etcd.example:2379\"]\nadvertise = \"vpn-a.example.com:443\"\netcd_ca = \"etcd/ca.crt\"\n",
    ))
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.prefix, DEFAULT_CLUSTER_PREFIX);
    assert_eq!(
        cluster.etcd_ca,
        Some(PathBuf::from("/etc/cvpn/etcd/ca.crt"))
    );
    assert!(parse(GOOD).unwrap().cluster.is_none());
    let p = problems(&with(
        "node = \"gw a\"\netcd = [\"10.0.9.11:2379\"]\nadvertise = \"vpn\"\nprefix = \"cvpn\"\netcd_cert = \"c.pem\"\n",
    ));
    for key in [
        "cluster.node",
        "cluster.etcd",
        "cluster.advertise",
        "cluster.prefix",
        "cluster.etcd_cert",
    ] {
        assert!(p.iter().any(|(k, _)| k == key), "{key}: {p:?}");
    }
    let p = problems(&with("node = \"a\"\netcd = []\nadvertise = \"h:1\"\n"));
    assert!(p.iter().any(|(k, _)| k == "cluster.etcd"), "{p:?}");
}

#[test]
fn a_cluster_refuses_what_needs_routes_to_its_nodes() {
    let cluster =
        "\n[cluster]\nnode = \"a\"\netcd = [\"http://10.0.9.11:2379\"]\nadvertise = \"h:443\"\n";
    let p = problems(&format!(
        "{}{cluster}",
        GOOD.replace(
            "vpc_cidr = \"192.168.0.0/16\"",
            "vpc_cidr = \"192.168.0.0/16\"\nsnat = false"
        )
    ));
    assert!(
        p.iter().any(|(k, _)| k == "target_networks[0].snat"),
        "{p:?}"
    );
    let p = problems(&format!(
        "{GOOD}\n[[client_networks]]\ncommon_name = \"s\"\ncidr = \"10.42.0.0/16\"\n{cluster}"
    ));
    assert!(p.iter().any(|(k, _)| k == "client_networks"), "{p:?}");
}
