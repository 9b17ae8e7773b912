//! Helpers for the end-to-end tests: locating the built binaries, running
//! them, and a CA directory fixture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod checks;
pub mod cluster_bed;
pub mod etcd;
pub mod netns;
pub mod openvpn;
pub mod testbed;

/// A binary of the workspace, built by `cargo build --workspace` next to the
/// test executables (target/<profile>/).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// Runs a command and returns its output, with stderr printed on failure
/// of the caller's expectations via `ok`/`fails`.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns its stderr.
pub fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded but should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A CA directory made by `cvpn-pki init` in a temporary directory.
pub struct Pki {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(extra_init_args: &[&str]) -> Pki {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pki");
        let pki = Pki { _tmp: tmp, dir };
        let mut args = vec!["init"];
        args.extend_from_slice(extra_init_args);
        ok(&mut pki.cmd(&args));
        pki
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("cvpn-pki"));
        c.arg("--dir").arg(&self.dir).args(args);
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        ok(&mut self.cmd(args))
    }

    pub fn fails(&self, args: &[&str]) -> String {
        fails(&mut self.cmd(args))
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.path(&format!("issued/{name}.crt"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.path(&format!("private/{name}.key"))
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).expect("read pki file")
    }
}

/// Every file under `dir` with its contents, to show a command changed nothing.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.insert(p.clone(), Vec::new());
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}
