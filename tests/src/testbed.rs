//! The test network of DESIGN.md, in namespaces:
//!
//! ```text
//! client i (c0 198.18.i.2) --- (gc i 198.18.i.1) gateway (g1 192.168.1.1, .10) --- br0 in target (192.168.1.20)
//!                                                                                    |
//!                                                 router (r0 192.168.1.254, r1 10.20.0.1) --- peered (10.20.0.2)
//! ```
//!
//! The target has no route to the client CIDR: replies come back only
//! because the gateway SNATs to its ENI address 192.168.1.10.

use std::path::PathBuf;

use crate::netns::{Netns, Proc, in_ns, run_ok, sh_ok};
use crate::{Pki, bin};

pub const TARGET: &str = "192.168.1.20";
pub const ENI: &str = "192.168.1.10";
pub const ROUTER: &str = "192.168.1.254";
pub const PEERED: &str = "10.20.0.2";
pub const PEERED_ROUTER: &str = "10.20.0.1";
pub const CLIENT_CIDR: &str = "10.250.0.0/22";

pub struct Testbed {
    pub clients: Vec<String>,
    pub gateway: String,
    pub target: String,
    pub router: String,
    pub peered: String,
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    // Last: namespaces go after everything that runs in them.
    pub netns: Netns,
}

fn ip(ns: &str, args: &str) {
    let mut c = std::process::Command::new("ip");
    c.arg("-n").arg(ns).args(args.split_whitespace());
    run_ok(&mut c);
}

impl Testbed {
    pub fn new(tag: &str, n_clients: usize) -> Testbed {
        let mut netns = Netns::new(tag);
        let gateway = netns.add("gw");
        let target = netns.add("tgt");
        let router = netns.add("rtr");
        let peered = netns.add("peer");
        let mut clients = Vec::new();
        for i in 0..n_clients {
            let c = netns.add(&format!("c{i}"));
            ip(
                &c,
                &format!("link add c0 type veth peer name gc{i} netns {gateway}"),
            );
            ip(&c, &format!("addr add 198.18.{i}.2/24 dev c0"));
            ip(&c, "link set c0 up");
            ip(&c, &format!("route add default via 198.18.{i}.1"));
            ip(&gateway, &format!("addr add 198.18.{i}.1/24 dev gc{i}"));
            ip(&gateway, &format!("link set gc{i} up"));
            clients.push(c);
        }
        ip(&target, "link add br0 type bridge");
        ip(&target, "link set br0 up");
        ip(&target, &format!("addr add {TARGET}/24 dev br0"));
        ip(
            &gateway,
            &format!("link add g1 type veth peer name tg netns {target}"),
        );
        ip(&gateway, "addr add 192.168.1.1/24 dev g1");
        ip(&gateway, &format!("addr add {ENI}/24 dev g1"));
        ip(&gateway, "link set g1 up");
        ip(&target, "link set tg master br0 up");
        ip(
            &router,
            &format!("link add r0 type veth peer name tr netns {target}"),
        );
        ip(&target, "link set tr master br0 up");
        ip(&router, &format!("addr add {ROUTER}/24 dev r0"));
        ip(&router, "link set r0 up");
        ip(
            &router,
            &format!("link add r1 type veth peer name p0 netns {peered}"),
        );
        ip(&router, &format!("addr add {PEERED_ROUTER}/24 dev r1"));
        ip(&router, "link set r1 up");
        ip(&peered, &format!("addr add {PEERED}/24 dev p0"));
        ip(&peered, "link set p0 up");
        ip(&peered, &format!("route add default via {PEERED_ROUTER}"));
        crate::netns::sh_ok(&router, "echo 1 > /proc/sys/net/ipv4/ip_forward");
        ip(&gateway, &format!("route add 10.20.0.0/16 via {ROUTER}"));

        let pki = Pki::new(&["--cn", "Testbed CA"]);
        pki.ok(&["issue", "server", "vpn.example.com", "--ip", "198.18.0.1"]);
        Testbed {
            clients,
            gateway,
            target,
            router,
            peered,
            pki,
            dir: tempfile::tempdir().expect("tempdir"),
            netns,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.path("gw.sock")
    }

    pub fn connection_log(&self) -> PathBuf {
        self.path("connections.jsonl")
    }

    /// Writes the endpoint configuration: `top` goes before the tables
    /// (split_tunnel, dns_servers, ...), `tables` after (rules, routes).
    pub fn write_config(&self, top: &str, tables: &str) -> PathBuf {
        let p = &self.pki;
        let text = format!(
            r#"listen = "0.0.0.0:443"
client_cidr = "{CLIENT_CIDR}"
control_socket = "{sock}"
connection_log = "{log}"
state_dir = "{state}"
banner = "Authorized use only."
{top}

[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
crl = "{crl}"

[[target_networks]]
id = "tn-a"
interface = "g1"
eni_address = "{ENI}"
vpc_cidr = "192.168.1.0/24"

[[routes]]
destination = "10.20.0.0/16"
target = "tn-a"

{tables}
"#,
            sock = self.control_socket().display(),
            log = self.connection_log().display(),
            state = self.path("state").display(),
            cert = p.cert("vpn.example.com").display(),
            key = p.key("vpn.example.com").display(),
            ca = p.path("ca.crt").display(),
            crl = p.path("crl.pem").display(),
        );
        let path = self.path("endpoint.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts the gateway and waits until it is up.
    pub fn start_gateway(&self, config: &std::path::Path) -> Proc {
        self.start_gateway_with_env(config, &[])
    }

    /// The same with environment variables set for the gateway.
    pub fn start_gateway_with_env(&self, config: &std::path::Path, env: &[(&str, &str)]) -> Proc {
        let mut cmd = in_ns(&self.gateway, &bin("cvpn-gw"));
        cmd.arg("serve").arg("--config").arg(config);
        cmd.envs(env.iter().copied());
        let mut p = Proc::spawn("cvpn-gw", cmd);
        p.wait_for("endpoint up", 20);
        p
    }

    /// Issues a client certificate and exports its profile for client `i`.
    pub fn client_profile(&self, name: &str, groups: &[&str], i: usize) -> PathBuf {
        let mut args = vec!["issue", "client", name];
        for g in groups {
            args.extend(["--group", g]);
        }
        self.pki.ok(&args);
        self.export_profile(name, i)
    }

    /// `export-profile` for `name` and client `i`, named `.ovpn` as stock
    /// clients want it (cvpn-client takes any name); it says that every
    /// client takes the file.
    pub fn export_profile(&self, name: &str, i: usize) -> PathBuf {
        let out = self.path(&format!("{name}.ovpn"));
        let config = self.path("endpoint.toml");
        let result = crate::run(
            std::process::Command::new(bin("cvpn-gw"))
                .args(["export-profile", "--config"])
                .arg(&config)
                .arg("--pki")
                .arg(&self.pki.dir)
                .args([
                    "--client",
                    name,
                    "--remote",
                    &format!("198.18.{i}.1:443"),
                    "--out",
                ])
                .arg(&out),
        );
        let said = String::from_utf8_lossy(&result.stderr);
        assert!(
            result.status.success()
                && said.contains("OpenVPN Connect / OpenVPN 3 take it as it is"),
            "export-profile: {said}"
        );
        out
    }

    /// Starts `cvpn-client connect PROFILE --once` in client `i`.
    pub fn spawn_client(&self, i: usize, profile: &std::path::Path) -> Proc {
        let mut cmd = in_ns(&self.clients[i], &bin("cvpn-client"));
        cmd.arg("connect").arg(profile).arg("--once");
        Proc::spawn(&format!("cvpn-client {i}"), cmd)
    }

    /// Starts `cvpn-client connect PROFILE` (reconnecting, without
    /// `--once`) in client `i` and waits until its tunnel is up.
    pub fn connect_persistent(&self, i: usize, profile: &std::path::Path) -> Proc {
        let mut cmd = in_ns(&self.clients[i], &bin("cvpn-client"));
        cmd.arg("connect").arg(profile);
        let mut p = Proc::spawn(&format!("cvpn-client {i}"), cmd);
        // The status block's last line: routes, DNS and the status are
        // all there once it is.
        p.wait_for("  expires in ", 20);
        p
    }

    /// The client address of each live session, by common name.
    pub fn addresses(&self) -> std::collections::BTreeMap<String, String> {
        self.connections()["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["common-name"].as_str().unwrap_or("").to_string(),
                    c["client-ip"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Starts a client and waits until its tunnel is up.
    pub fn connect(&self, i: usize, profile: &std::path::Path) -> Proc {
        let mut p = self.spawn_client(i, profile);
        // The status block's last line: routes, DNS and the status are
        // all there once it is.
        p.wait_for("  expires in ", 20);
        p
    }

    /// `cvpn-gw connections --json`: live sessions and drop counters.
    pub fn connections(&self) -> serde_json::Value {
        let out = crate::ok(
            std::process::Command::new(bin("cvpn-gw"))
                .args(["connections", "--json", "--control"])
                .arg(self.control_socket()),
        );
        serde_json::from_str(&out).expect("connections --json")
    }

    /// 20 MB between client namespace `c` and the target, checked byte for
    /// byte by the receiving side (the target with `upload`). Returns what the
    /// client side printed and what the target side printed once done.
    pub fn transfer(&self, c: &str, port: u16, seed: u32, upload: bool) -> (String, String) {
        let flag = if upload { "--upload " } else { "" };
        let mut target = Proc::spawn("target side", {
            let mut cmd = in_ns(&self.target, &self.helper());
            cmd.args(["serve", "--listen", &format!("{TARGET}:{port}")]);
            cmd.args(["--bytes", "20000000", "--seed", &seed.to_string()]);
            if upload {
                cmd.arg("--upload");
            }
            cmd
        });
        target.wait_for("listening", 10);
        let client = sh_ok(
            c,
            &format!(
                "{} fetch {flag}--connect {TARGET}:{port} --bytes 20000000 --seed {seed}",
                self.helper().display()
            ),
        );
        let done = target.wait_for(if upload { "ok " } else { "peer=" }, 10);
        (client, done)
    }

    pub fn helper(&self) -> PathBuf {
        bin("cvpn-e2e-helper")
    }
}
