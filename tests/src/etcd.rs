//! Three etcd members (Debian's etcd-server) in a namespace of their own,
//! on a bridge that gateways' namespaces join: the store of the cluster
//! tests. Members stop (SIGTERM, then SIGKILL) when dropped.

use std::time::{Duration, Instant};

use std::path::PathBuf;

use crate::netns::{Netns, Proc, in_ns, sh, sh_ok};
use crate::testbed::Testbed;

/// The members' addresses on the store's bridge.
pub const MEMBERS: [&str; 3] = ["10.0.9.11", "10.0.9.12", "10.0.9.13"];

pub struct Etcd {
    /// The store's namespace.
    pub ns: String,
    pub members: Vec<Proc>,
    _data: tempfile::TempDir,
    joined: usize,
}

impl Etcd {
    /// Starts three members in a new namespace of `netns` and waits until
    /// the cluster is healthy.
    pub fn start(netns: &mut Netns) -> Etcd {
        let ns = netns.add("etcd");
        sh_ok(
            &ns,
            "ip link add br0 type bridge && ip addr add 10.0.9.1/24 dev br0 && \
             ip link set br0 up && ip link set lo up",
        );
        for m in MEMBERS {
            sh_ok(&ns, &format!("ip addr add {m}/24 dev br0"));
        }
        let data = tempfile::tempdir().expect("tempdir");
        let members = (0..MEMBERS.len())
            .map(|i| spawn_member(&ns, data.path(), i))
            .collect();
        let etcd = Etcd {
            ns,
            members,
            _data: data,
            joined: 0,
        };
        etcd.wait_healthy(30);
        etcd
    }

    /// Stops every member (SIGTERM): the store is down.
    pub fn stop_all(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }

    /// Starts every member again on its data and waits until healthy.
    pub fn start_all(&mut self) {
        self.members = (0..MEMBERS.len())
            .map(|i| spawn_member(&self.ns, self._data.path(), i))
            .collect();
        self.wait_healthy(30);
    }

    /// The client URLs, as `[cluster] etcd` lists them.
    pub fn urls(&self) -> Vec<String> {
        MEMBERS.iter().map(|m| format!("http://{m}:2379")).collect()
    }

    /// Waits (at most `secs`) until a member says the cluster is healthy.
    pub fn wait_healthy(&self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let out = sh(
                &self.ns,
                &format!("curl -s -m 2 http://{}:2379/health", MEMBERS[0]),
            );
            if String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\"") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {secs} s:\n{}",
                self.members
                    .iter()
                    .map(|m| m.output())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Connects namespace `ns` to the store's bridge with `addr`.
    pub fn join(&mut self, ns: &str, addr: &str) {
        self.joined += 1;
        let (outside, inside) = (format!("et{}", self.joined), "etcd0");
        sh_ok(
            &self.ns,
            &format!(
                "ip link add {outside} type veth peer name {inside} netns {ns} && \
                 ip link set {outside} master br0 up"
            ),
        );
        sh_ok(
            ns,
            &format!("ip addr add {addr}/24 dev {inside} && ip link set {inside} up"),
        );
    }
}

/// Starts member `i` in `ns` with its data under `data` (a restart finds
/// its data and ignores the initial-cluster flags).
fn spawn_member(ns: &str, data: &std::path::Path, i: usize) -> Proc {
    let cluster: Vec<String> = MEMBERS
        .iter()
        .enumerate()
        .map(|(j, m)| format!("m{j}=http://{m}:2380"))
        .collect();
    let m = MEMBERS[i];
    let mut cmd = in_ns(ns, std::path::Path::new("etcd"));
    cmd.args(["--name", &format!("m{i}")])
        .arg("--data-dir")
        .arg(data.join(format!("m{i}")))
        .args(["--listen-client-urls", &format!("http://{m}:2379")])
        .args(["--advertise-client-urls", &format!("http://{m}:2379")])
        .args(["--listen-peer-urls", &format!("http://{m}:2380")])
        .args(["--initial-advertise-peer-urls", &format!("http://{m}:2380")])
        .args(["--initial-cluster", &cluster.join(",")])
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", "cvpn-test"]);
    Proc::spawn(&format!("etcd m{i}"), cmd)
}

/// The `[cluster]` table of node `node` (advertised as `advertise`) on
/// `etcd`'s members.
pub fn cluster_table(node: &str, advertise: &str, etcd: &Etcd) -> String {
    let urls: Vec<String> = etcd.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[cluster]\nnode = \"{node}\"\nadvertise = \"{advertise}\"\netcd = [{}]\n",
        urls.join(", ")
    )
}

/// `b`'s configuration with `a`'s PKI (one CA and server identity for the
/// endpoint), so one profile reaches either node; `b` keeps a CRL file of
/// its own (a copy of `a`'s now), so that a revocation on `a` reaches it
/// only through the cluster.
pub fn shared_pki_config(a: &Testbed, b: &Testbed, top: &str, tables: &str) -> PathBuf {
    let path = b.write_config(top, tables);
    let own_crl = b.path("crl.pem");
    std::fs::copy(a.pki.path("crl.pem"), &own_crl).expect("copy the CRL");
    let text = std::fs::read_to_string(&path)
        .expect("read config")
        .replace(
            &format!("crl = \"{}\"", b.pki.path("crl.pem").display()),
            &format!("crl = \"{}\"", own_crl.display()),
        )
        .replace(
            &b.pki.dir.display().to_string(),
            &a.pki.dir.display().to_string(),
        );
    std::fs::write(&path, text).expect("write config");
    path
}
