//! Network namespaces a test creates and removes, and processes it runs in
//! them. Names are unique per process and test, so tests run in parallel;
//! everything is removed on drop, also when the test fails.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces with a common unique prefix.
pub struct Netns {
    prefix: String,
    names: Vec<String>,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Netns {
            prefix: format!("cvpn-{tag}-{}-{n}", std::process::id()),
            names: Vec::new(),
        }
    }

    /// Creates the namespace `role` with loopback up; returns its name.
    pub fn add(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        self.names.push(name.clone());
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        name
    }

    /// Where `ip netns exec` finds this namespace's resolv.conf.
    pub fn etc_dir(name: &str) -> PathBuf {
        PathBuf::from("/etc/netns").join(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            // Processes still inside would keep the namespace's devices; the
            // Proc guards are dropped first by the test's field order.
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            let _ = std::fs::remove_dir_all(Netns::etc_dir(name));
        }
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip netns exec NS sh -c SCRIPT`.
pub fn sh(ns: &str, script: &str) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", script])
        .output()
        .expect("ip netns exec")
}

pub fn sh_ok(ns: &str, script: &str) -> String {
    run_ok(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", script]))
}

/// A command inside a namespace.
pub fn in_ns(ns: &str, program: &std::path::Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// A background process whose stdout and stderr are collected; killed
/// (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
            }));
        }
        Proc {
            name: name.to_string(),
            child: Some(child),
            output,
            readers,
        }
    }

    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the output contains `needle`; panics with the output
    /// after `secs`.
    pub fn wait_for(&mut self, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // The process may exit before its last lines are read.
                self.drain_output();
                let out = self.output();
                if out.contains(needle) {
                    return out;
                }
                panic!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {secs}s:\n{out}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most 2 s) for the readers to reach the end of the
    /// exited process's output.
    fn drain_output(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && self.readers.iter().any(|r| !r.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            // `ip netns exec` execs the program, so the pid is the program's.
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .output();
        }
    }

    /// Waits for the exit (at most `secs`); returns the exit code.
    pub fn wait(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.drain_output();
                return status.code().or(Some(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; panics if it does not exit within 10 s.
    pub fn stop(&mut self) -> i32 {
        self.signal("TERM");
        match self.wait(10) {
            Some(code) => code,
            None => panic!("{} ignored SIGTERM:\n{}", self.name, self.output()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("TERM");
            if self.wait(5).is_none() {
                self.signal("KILL");
                self.wait(5);
            }
        }
    }
}
