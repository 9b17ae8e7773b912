//! One endpoint on three gateways, in namespaces: the gateways share the
//! clients' network and one target network (each with its own ENI
//! address there), one PKI and one profile that lists every node; the
//! store is three etcd members (see `etcd`).
//!
//! ```text
//! client i (198.18.0.100+i) --+                     +-- (192.168.1.11+g) gateway g (198.18.0.11+g)
//!                             +-- hub: bc ... bt ---+
//! gateway g (198.18.0.11+g) --+                     +-- target 192.168.1.20
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::etcd::{Etcd, cluster_table};
use crate::netns::{Netns, Proc, in_ns, sh, sh_ok};
use crate::{Pki, bin};

/// The host every client reaches through the tunnel.
pub const TARGET: &str = "192.168.1.20";
const CLIENT_CIDR: &str = "10.250.0.0/22";

pub struct ClusterBed {
    pub gateways: Vec<String>,
    pub clients: Vec<String>,
    pub target: String,
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub etcd: Etcd,
    // Last: namespaces go after everything that runs in them.
    pub netns: Netns,
}

/// Connects `ns` to bridge `bridge` of the hub with `addr`/24 on `dev`.
fn plug(hub: &str, bridge: &str, ns: &str, dev: &str, port: &str, addr: &str) {
    sh_ok(
        hub,
        &format!(
            "ip link add {port} type veth peer name {dev} netns {ns} && \
             ip link set {port} master {bridge} up"
        ),
    );
    sh_ok(
        ns,
        &format!("ip addr add {addr}/24 dev {dev} && ip link set {dev} up"),
    );
}

impl ClusterBed {
    pub fn new(tag: &str, n_gateways: usize, n_clients: usize) -> ClusterBed {
        let mut netns = Netns::new(tag);
        let hub = netns.add("hub");
        sh_ok(
            &hub,
            "ip link add bc type bridge && ip link set bc up && \
             ip link add bt type bridge && ip link set bt up",
        );
        let target = netns.add("tgt");
        plug(&hub, "bt", &target, "t0", "pt", TARGET);
        let mut etcd = Etcd::start(&mut netns);
        let gateways: Vec<String> = (0..n_gateways)
            .map(|g| {
                let ns = netns.add(&format!("gw{g}"));
                plug(
                    &hub,
                    "bc",
                    &ns,
                    "c0",
                    &format!("gc{g}"),
                    &format!("198.18.0.{}", 11 + g),
                );
                plug(
                    &hub,
                    "bt",
                    &ns,
                    "g1",
                    &format!("gt{g}"),
                    &format!("192.168.1.{}", 11 + g),
                );
                etcd.join(&ns, &format!("10.0.9.{}", 21 + g));
                ns
            })
            .collect();
        let clients = (0..n_clients)
            .map(|i| {
                let ns = netns.add(&format!("c{i}"));
                plug(
                    &hub,
                    "bc",
                    &ns,
                    "c0",
                    &format!("cc{i}"),
                    &format!("198.18.0.{}", 100 + i),
                );
                ns
            })
            .collect();
        let pki = Pki::new(&["--cn", "Cluster CA"]);
        pki.ok(&["issue", "server", "vpn.example.com"]);
        ClusterBed {
            gateways,
            clients,
            target,
            pki,
            dir: tempfile::tempdir().expect("tempdir"),
            etcd,
            netns,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where gateway `g` is reached by clients.
    pub fn advertise(g: usize) -> String {
        format!("198.18.0.{}:443", 11 + g)
    }

    pub fn control_socket(&self, g: usize) -> PathBuf {
        self.path(&format!("gw{g}.sock"))
    }

    /// Writes gateway `g`'s configuration: the same policy on every node
    /// (`top` before the tables), its own ENI, sockets, logs and state.
    pub fn write_config(&self, g: usize, top: &str) -> PathBuf {
        let p = &self.pki;
        let text = format!(
            r#"listen = "0.0.0.0:443"
client_cidr = "{CLIENT_CIDR}"
control_socket = "{sock}"
connection_log = "{log}"
state_dir = "{state}"
{top}
{cluster}
[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
crl = "{crl}"

[[target_networks]]
id = "tn-a"
interface = "g1"
eni_address = "192.168.1.{eni}"
vpc_cidr = "192.168.1.0/24"

[[authorization_rules]]
destination = "192.168.1.0/24"
"#,
            sock = self.control_socket(g).display(),
            log = self.path(&format!("gw{g}.jsonl")).display(),
            state = self.path(&format!("gw{g}-state")).display(),
            cluster = cluster_table(&format!("gw{g}"), &Self::advertise(g), &self.etcd),
            cert = p.cert("vpn.example.com").display(),
            key = p.key("vpn.example.com").display(),
            ca = p.path("ca.crt").display(),
            crl = p.path("crl.pem").display(),
            eni = 11 + g,
        );
        let path = self.path(&format!("gw{g}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts gateway `g` on its configuration and waits until it is up.
    pub fn start(&self, g: usize) -> Proc {
        let mut cmd = in_ns(&self.gateways[g], &bin("cvpn-gw"));
        cmd.arg("serve")
            .arg("--config")
            .arg(self.path(&format!("gw{g}.toml")));
        let mut p = Proc::spawn(&format!("cvpn-gw {g}"), cmd);
        p.wait_for("endpoint up", 20);
        p
    }

    /// Issues `name` a certificate and exports its profile from the
    /// cluster (one `remote` per live node).
    pub fn profile(&self, name: &str) -> PathBuf {
        self.pki.ok(&["issue", "client", name]);
        let out = self.path(&format!("{name}.ovpn"));
        crate::ok(
            std::process::Command::new("ip")
                .args(["netns", "exec", &self.gateways[0]])
                .arg(bin("cvpn-gw"))
                .args(["export-profile", "--config"])
                .arg(self.path("gw0.toml"))
                .arg("--pki")
                .arg(&self.pki.dir)
                .args(["--client", name, "--out"])
                .arg(&out),
        );
        out
    }

    /// `connections --json` through gateway `g`: every node's sessions.
    pub fn connections(&self, g: usize) -> serde_json::Value {
        let out = crate::ok(
            std::process::Command::new(bin("cvpn-gw"))
                .args(["connections", "--json", "--control"])
                .arg(self.control_socket(g)),
        );
        serde_json::from_str(&out).expect("connections --json")
    }

    /// The node holding `cn`'s session (not `except`, whose entries may
    /// linger) and its address, as gateway `g` lists them.
    pub fn holder(&self, g: usize, cn: &str, except: Option<&str>) -> Option<(String, String)> {
        self.connections(g)["connections"]
            .as_array()?
            .iter()
            .find(|c| c["common-name"] == cn && except.is_none_or(|e| c["node"] != e))
            .map(|c| {
                (
                    c["node"].as_str().unwrap_or("").to_string(),
                    c["client-ip"].as_str().unwrap_or("").to_string(),
                )
            })
    }

    /// The address of `cn`'s session on gateway `g` itself (its own
    /// sessions carry live counters; other nodes' do not), if it holds
    /// one.
    pub fn holds(&self, g: usize, cn: &str) -> Option<String> {
        // A gateway that exits (drained) answers nothing.
        let out = crate::run(
            std::process::Command::new(bin("cvpn-gw"))
                .args(["connections", "--json", "--control"])
                .arg(self.control_socket(g)),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["connections"]
            .as_array()?
            .iter()
            .find(|c| c["common-name"] == cn && c.get("ingress-bytes").is_some())
            .map(|c| c["client-ip"].as_str().unwrap_or("").to_string())
    }

    /// Starts a reconnecting cvpn-client in client `i` and waits until its
    /// tunnel is up.
    pub fn cvpn_client(&self, i: usize, profile: &Path) -> Proc {
        let mut cmd = in_ns(&self.clients[i], &bin("cvpn-client"));
        cmd.arg("connect").arg(profile);
        let mut p = Proc::spawn(&format!("cvpn-client {i}"), cmd);
        p.wait_for("  expires in ", 30);
        p
    }

    /// Starts a stock openvpn client in client `i` and waits until its
    /// tunnel is up.
    pub fn openvpn(&self, i: usize, profile: &Path) -> Proc {
        let mut cmd = in_ns(&self.clients[i], Path::new("openvpn"));
        cmd.arg("--config").arg(profile);
        let mut p = Proc::spawn(&format!("openvpn {i}"), cmd);
        p.wait_for("Initialization Sequence Completed", 40);
        p
    }

    /// Makes gateway `g` unreachable from client `i` (or reachable again).
    pub fn cut(&self, i: usize, g: usize, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        sh_ok(
            &self.clients[i],
            &format!("ip route {verb} prohibit 198.18.0.{}/32", 11 + g),
        );
    }

    /// Pings the target from client `i` until one answers (at most
    /// `secs`); how long that took.
    pub fn until_reaches(&self, i: usize, secs: u64) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            let out = sh(&self.clients[i], &format!("ping -c1 -W1 {TARGET}"));
            if out.status.success() {
                return Some(start.elapsed());
            }
            // No route while the client reconnects: ping fails at once.
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}
