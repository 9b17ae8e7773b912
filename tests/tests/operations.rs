//! Running the endpoint as a service: the systemd units pass
//! `systemd-analyze verify`, every option of every command says what it
//! does, and `--log-format json` logs one JSON object per line.

use std::path::Path;

use cvpn_e2e::netns::{Proc, in_ns};
use cvpn_e2e::testbed::Testbed;
use cvpn_e2e::{bin, ok};

#[test]
fn the_systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    let mut names = Vec::new();
    for unit in ["cvpn-gw.service", "cvpn-client@.service"] {
        // The binaries of this build stand in for the package's.
        let text = std::fs::read_to_string(units.join(unit))
            .unwrap()
            .replace("/usr/bin/cvpn-gw", &bin("cvpn-gw").display().to_string())
            .replace(
                "/usr/bin/cvpn-client",
                &bin("cvpn-client").display().to_string(),
            );
        let name = unit.replace("@.", "@example.");
        std::fs::write(dir.path().join(&name), text).unwrap();
        names.push(dir.path().join(name));
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .output()
        .expect("systemd-analyze (scripts/deps.sh installs systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each option line of `BIN ARGS -h` has a description after the flag.
fn undocumented(bin_name: &str, args: &[&str]) -> Vec<String> {
    let help = ok(std::process::Command::new(bin(bin_name))
        .args(args)
        .arg("-h"));
    help.lines()
        .skip_while(|l| !l.starts_with("Options:") && !l.starts_with("Arguments:"))
        .filter(|l| l.starts_with("  ") && !l.trim().is_empty())
        .filter(|l| {
            // What is left of the line after the flag, without the
            // [default: ...] and [possible values: ...] clap adds.
            let rest = l
                .trim_start()
                .split_once("  ")
                .map(|(_, r)| r)
                .unwrap_or("");
            let mut text = rest.to_string();
            while let (Some(a), Some(b)) = (text.find('['), text.find(']')) {
                if b < a {
                    break;
                }
                text.replace_range(a..=b, "");
            }
            text.trim().is_empty()
        })
        .map(|l| format!("{bin_name} {}: {}", args.join(" "), l.trim()))
        .collect()
}

#[test]
fn every_option_of_every_command_says_what_it_does() {
    let mut missing = Vec::new();
    for sub in [
        "serve",
        "check",
        "export-profile",
        "tls-crypt-key",
        "connections",
        "reload",
        "reopen-logs",
        "terminate",
    ] {
        missing.extend(undocumented("cvpn-gw", &[sub]));
    }
    missing.extend(undocumented("cvpn-gw", &["cluster", "status"]));
    missing.extend(undocumented("cvpn-client", &["connect"]));
    missing.extend(undocumented("cvpn-load", &[]));
    for sub in [
        &["init"][..],
        &["issue", "server"],
        &["issue", "client"],
        &["revoke"],
        &["crl"],
        &["list"],
        &["show"],
    ] {
        missing.extend(undocumented("cvpn-pki", sub));
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let tb = Testbed::new("jsonlog", 1);
    let config = tb.write_config("", "");
    let mut cmd = in_ns(&tb.gateway, &bin("cvpn-gw"));
    cmd.args(["--log-format", "json", "serve", "--config"])
        .arg(&config);
    let mut gw = Proc::spawn("cvpn-gw", cmd);
    gw.wait_for("endpoint up", 20);
    let out = gw.output();
    let line = out.lines().find(|l| l.contains("endpoint up")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).expect(line);
    assert_eq!(v["fields"]["message"], "endpoint up", "{v}");
    assert_eq!(v["level"], "INFO");
}
