//! A log file of one JSON object per line (the connection log, the flow
//! log), appended to by many threads.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

/// An open JSON-lines log.
pub struct JsonLog {
    path: PathBuf,
    file: Mutex<File>,
    /// The last write failed: a full disk is reported once, not per line.
    failing: AtomicBool,
}

impl JsonLog {
    /// Opens `path` for appending, creating it (and its directory) if
    /// needed; never through a symbolic link.
    pub fn open(path: &Path) -> std::io::Result<JsonLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Ok(JsonLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            failing: AtomicBool::new(false),
        })
    }

    /// Appends `value` as one line: a single write, so lines of threads
    /// writing at once do not interleave.
    pub fn write(&self, value: &Value) {
        let mut line = value.to_string();
        line.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        match f.write_all(line.as_bytes()) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %self.path.display(), "the log is written again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %self.path.display(), error = %e,
                                   "cannot write the log (lines are lost until it can)");
                }
            }
        }
    }
}
