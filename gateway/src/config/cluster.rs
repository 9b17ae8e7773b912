//! Validation of `[cluster]`.

use std::path::PathBuf;

use super::validate::Validator;
use super::*;

/// The most etcd members a cluster may name.
const MAX_ETCD_MEMBERS: usize = 16;

impl Validator {
    /// In a cluster, traffic back to a client must find the node holding
    /// it: SNAT makes each node's flows return to it, but `snat = false`
    /// and client networks would need the target network to route each
    /// client address to its node, which the cluster does not arrange
    /// (yet): refused.
    pub(super) fn cluster_return_traffic(
        &mut self,
        targets: &[TargetNetwork],
        client_networks: &[ClientNetwork],
    ) {
        for (i, t) in targets.iter().enumerate().filter(|(_, t)| !t.snat) {
            self.bad(
                format!("target_networks[{i}].snat"),
                format!(
                    "{}: snat = false is not supported with [cluster] (replies must return to the node holding the client)",
                    t.id
                ),
            );
        }
        if !client_networks.is_empty() {
            self.bad(
                "client_networks",
                "not supported with [cluster] (the target networks would have to route each site to its node)",
            );
        }
    }

    pub(super) fn cluster(
        &mut self,
        raw: RawCluster,
        resolve: &dyn Fn(PathBuf) -> PathBuf,
    ) -> Cluster {
        let node_ok = (1..=63).contains(&raw.node.len())
            && raw
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !node_ok {
            self.bad(
                "cluster.node",
                format!("{:?}: 1 to 63 letters, digits, '-', '_' or '.'", raw.node),
            );
        }
        if raw.etcd.is_empty() || raw.etcd.len() > MAX_ETCD_MEMBERS {
            self.bad(
                "cluster.etcd",
                format!("give 1 to {MAX_ETCD_MEMBERS} etcd client URLs"),
            );
        }
        for url in &raw.etcd {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if !rest.is_some_and(|r| {
                r.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            }) {
                self.bad(
                    "cluster.etcd",
                    format!("{url:?} is not a URL like \"http://10.0.9.11:2379\""),
                );
            }
        }
        if !raw
            .advertise
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
        {
            self.bad(
                "cluster.advertise",
                format!("{:?} is not HOST:PORT", raw.advertise),
            );
        }
        let prefix = raw.prefix.unwrap_or_else(|| DEFAULT_CLUSTER_PREFIX.into());
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() > 128 {
            self.bad(
                "cluster.prefix",
                format!("{prefix:?}: a key prefix like \"/cvpn/\" (starts and ends with '/')"),
            );
        }
        let etcd_identity = match (raw.etcd_cert, raw.etcd_key) {
            (Some(c), Some(k)) => Some((resolve(c), resolve(k))),
            (None, None) => None,
            _ => {
                self.bad("cluster.etcd_cert", "etcd_cert and etcd_key go together");
                None
            }
        };
        Cluster {
            node: raw.node,
            etcd: raw.etcd,
            advertise: raw.advertise,
            prefix,
            etcd_ca: raw.etcd_ca.map(resolve),
            etcd_identity,
        }
    }
}
