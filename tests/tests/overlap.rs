//! Customers whose CIDRs overlap: two target networks with the same
//! vpc_cidr and the same ENI address on two interfaces, each reached
//! under its own alias. A laptop fetches from both hosts (the same real
//! address and port) at once and gets each host's own bytes; each host
//! sees the ENI address; a laptop without the group is refused; `check`
//! refuses the layout without aliases.

use cvpn_e2e::checks::{denied, reaches};
use cvpn_e2e::netns::{Proc, in_ns, sh_ok};
use cvpn_e2e::testbed::Testbed;

/// Each customer's host: the same real address in both networks.
const HOST: &str = "10.0.0.20";
const CUSTOMER_ENI: &str = "10.0.0.10";
const ALIASES: [&str; 2] = ["100.70.1.0/24", "100.70.2.0/24"];
const ALIASED_HOSTS: [&str; 2] = ["100.70.1.20", "100.70.2.20"];

fn customers(aliases: bool) -> String {
    let mut t = String::new();
    for (i, alias) in ALIASES.iter().enumerate() {
        let n = i + 1;
        t += &format!(
            "[[target_networks]]\nid = \"cust-{n}\"\ninterface = \"g{}\"\neni_address = \"{CUSTOMER_ENI}\"\n\
             vpc_cidr = \"10.0.0.0/24\"\n",
            n + 1
        );
        if aliases {
            t += &format!("alias_cidr = \"{alias}\"\n");
        }
        t += "\n";
    }
    t + "[[authorization_rules]]\ndestination = \"100.70.0.0/16\"\naccess_group = \"ops\"\n"
}

/// Customer networks 1 and 2: a namespace each with HOST, on the
/// gateway's interfaces g2 and g3, both with the address CUSTOMER_ENI.
fn add_customers(tb: &mut Testbed) -> Vec<String> {
    let mut hosts = Vec::new();
    for n in 1..=2 {
        let ns = tb.netns.add(&format!("cust{n}"));
        let g = format!("g{}", n + 1);
        sh_ok(
            &tb.gateway,
            &format!(
                "ip link add {g} type veth peer name h0 netns {ns} && \
                 ip addr add {CUSTOMER_ENI}/24 dev {g} && ip link set {g} up"
            ),
        );
        sh_ok(
            &ns,
            &format!("ip addr add {HOST}/24 dev h0 && ip link set h0 up && ip link set lo up"),
        );
        hosts.push(ns);
    }
    hosts
}

#[test]
fn overlapping_customers_each_under_its_alias() {
    let mut tb = Testbed::new("overlap", 2);
    let hosts = add_customers(&mut tb);
    // Without aliases the layout is refused, naming both networks.
    let plain = tb.write_config("", &customers(false));
    let refused = cvpn_e2e::fails(
        std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
            .args(["check", "--config"])
            .arg(&plain),
    );
    assert!(
        refused.contains("cust-1") && refused.contains("cust-2") && refused.contains("alias_cidr"),
        "{refused}"
    );
    let flows = tb.path("flows.jsonl");
    let config = tb.write_config(
        &format!("flow_log = \"{}\"", flows.display()),
        &customers(true),
    );
    let check = cvpn_e2e::ok(
        std::process::Command::new(cvpn_e2e::bin("cvpn-gw"))
            .args(["check", "--config"])
            .arg(&config),
    );
    for (i, alias) in ALIASES.iter().enumerate() {
        assert!(
            check.lines().any(|l| l.contains(alias)
                && l.contains(&format!("cust-{}", i + 1))
                && l.contains("associate")),
            "{check}"
        );
    }
    let mut gw = tb.start_gateway(&config);
    let ops = tb.client_profile("olga", &["ops"], 0);
    let sales = tb.client_profile("sam", &["sales"], 1);
    let _olga = tb.connect(0, &ops);
    let _sam = tb.connect(1, &sales);
    let routes = sh_ok(&tb.clients[0], "ip -4 route show");
    for alias in ALIASES {
        assert!(routes.contains(alias), "{routes}");
    }

    // One server per customer on the same address and port, each with
    // its own bytes (seed): a fetch checks it got that host's.
    let helper = tb.helper();
    let mut servers: Vec<Proc> = hosts
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let mut cmd = in_ns(ns, &helper);
            cmd.args(["serve", "--listen", &format!("{HOST}:7100")]);
            cmd.args(["--bytes", "3000000", "--seed", &(31 + i).to_string()]);
            let mut p = Proc::spawn(&format!("customer {}", i + 1), cmd);
            p.wait_for("listening", 10);
            p
        })
        .collect();
    let fetches: Vec<Proc> = ALIASED_HOSTS
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let mut cmd = in_ns(&tb.clients[0], &helper);
            cmd.args(["fetch", "--connect", &format!("{host}:7100")]);
            cmd.args(["--bytes", "3000000", "--seed", &(31 + i).to_string()]);
            Proc::spawn(&format!("fetch {host}"), cmd)
        })
        .collect();
    for mut f in fetches {
        f.wait_for("ok 3000000 bytes", 30);
    }
    for s in &mut servers {
        let seen = s.wait_for("peer=", 10);
        assert!(
            seen.contains(&format!("peer={CUSTOMER_ENI}\n")),
            "each host sees its ENI address: {seen}"
        );
    }
    for host in ALIASED_HOSTS {
        reaches(&tb.clients[0], host);
        denied(&tb.clients[1], host);
    }

    // The flow log names the real address and the alias.
    let lines = std::fs::read_to_string(&flows).unwrap_or_default();
    for (i, alias_host) in ALIASED_HOSTS.iter().enumerate() {
        assert!(
            lines.lines().any(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                v["dstaddr"] == HOST
                    && v["alias-dstaddr"] == *alias_host
                    && v["target-network"] == format!("cust-{}", i + 1)
                    && v["common-name"] == "olga"
            }),
            "{lines}"
        );
    }

    // Nothing of the aliases' routing outlives the gateway.
    assert_eq!(gw.stop(), 0, "{}", gw.output());
    let rules = sh_ok(&tb.gateway, "ip -4 rule show");
    assert!(!rules.contains("3276:"), "{rules}");
    let tables = sh_ok(&tb.gateway, "nft list tables");
    assert!(!tables.contains("cvpn_gw"), "{tables}");
}
