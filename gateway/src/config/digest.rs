//! A policy as a cluster's nodes compare it: every key of its
//! configuration file but the node's own (`[cluster] node` and
//! `advertise`, `listen`, `data_threads`, each target network's `interface` and
//! `eni_address`), each with a digest, so that `cluster status` names
//! the keys in which two live nodes differ.

use std::collections::BTreeMap;

/// Keys that are each node's own.
const NODE_LOCAL: [&str; 2] = ["listen", "data_threads"];
const NODE_LOCAL_CLUSTER: [&str; 2] = ["node", "advertise"];
const NODE_LOCAL_TARGET: [&str; 2] = ["interface", "eni_address"];

/// Digest (hex) of each top-level key of `text`, a configuration file
/// already validated, node-local keys left out.
pub fn key_digests(text: &str) -> Result<BTreeMap<String, String>, toml::de::Error> {
    let mut table: toml::Table = toml::from_str(text)?;
    for key in NODE_LOCAL {
        table.remove(key);
    }
    if let Some(toml::Value::Table(c)) = table.get_mut("cluster") {
        for key in NODE_LOCAL_CLUSTER {
            c.remove(key);
        }
    }
    if let Some(toml::Value::Array(targets)) = table.get_mut("target_networks") {
        for t in targets.iter_mut().filter_map(|t| t.as_table_mut()) {
            for key in NODE_LOCAL_TARGET {
                t.remove(key);
            }
        }
    }
    Ok(table
        .into_iter()
        .map(|(key, value)| (key, digest(&canonical(&value))))
        .collect())
}

/// One digest of a whole policy.
pub fn policy_digest(keys: &BTreeMap<String, String>) -> String {
    let joined: String = keys.iter().map(|(k, d)| format!("{k}={d};")).collect();
    digest(&joined)
}

/// The keys whose digests differ between two policies (present in one
/// only, or with other values).
pub fn differing(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// A value's JSON with sorted keys: two files that say the same in
/// another order or layout digest the same.
fn canonical(value: &toml::Value) -> String {
    // serde_json's maps are sorted (no preserve_order feature).
    serde_json::to_value(value)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

fn digest(text: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    d.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"
listen = "0.0.0.0:443"
client_cidr = "10.250.0.0/22"
[cluster]
node = "gw-a"
advertise = "203.0.113.1:443"
etcd = ["http://10.0.9.11:2379"]
[[target_networks]]
id = "tn-a"
interface = "eth1"
eni_address = "192.168.1.10"
vpc_cidr = "192.168.0.0/16"
[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "eng"
"#;

    #[test]
    fn node_local_keys_do_not_count_and_rules_do() {
        let a = key_digests(A).unwrap();
        let b_text = A
            .replace("gw-a", "gw-b")
            .replace("203.0.113.1", "203.0.113.2")
            .replace("0.0.0.0:443", "10.1.1.1:443")
            .replace("eth1", "ens5")
            .replace("192.168.1.10", "192.168.1.11");
        let b = key_digests(&b_text).unwrap();
        assert_eq!(policy_digest(&a), policy_digest(&b));
        assert!(differing(&a, &b).is_empty());
        let c = key_digests(&b_text.replace("\"eng\"", "\"ops\"")).unwrap();
        assert_eq!(differing(&a, &c), ["authorization_rules"]);
        assert_ne!(policy_digest(&a), policy_digest(&c));
        let d = key_digests(&format!("split_tunnel = false\n{A}")).unwrap();
        assert_eq!(differing(&a, &d), ["split_tunnel"]);
        // The same keys in another order digest the same.
        let e = key_digests(&A.replace(
            "id = \"tn-a\"\ninterface",
            "interface = \"eth9\"\nid = \"tn-a\"\n#interface",
        ))
        .unwrap();
        assert!(differing(&a, &e).is_empty(), "{:?}", differing(&a, &e));
    }
}
