//! A log file of one JSON object per line (the connection log, the flow
//! log), appended to by many threads, and reopened under its name when
//! logrotate has moved it away.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

/// Opens `path` to append, created 0640 if new (its directory too), never
/// through a symbolic link.
fn open_file(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

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
        Ok(JsonLog {
            path: path.to_path_buf(),
            file: Mutex::new(open_file(path)?),
            failing: AtomicBool::new(false),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again (a new file if logrotate moved the old one
    /// away) and writes there from now on. A line is written whole to one
    /// file or the other; on an error the old file stays in use.
    pub fn reopen(&self) -> std::io::Result<()> {
        let file = open_file(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = file;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_log_writes_to_the_new_file_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let log = JsonLog::open(&path).unwrap();
        log.write(&serde_json::json!({"n": 1}));
        let rotated = dir.path().join("log.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        // Until it is reopened, lines follow the file it has.
        log.write(&serde_json::json!({"n": 2}));
        log.reopen().unwrap();
        log.write(&serde_json::json!({"n": 3}));
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":3}\n");
        // A symbolic link in its place is refused; the old file stays.
        std::fs::rename(&path, dir.path().join("log.jsonl.2")).unwrap();
        std::os::unix::fs::symlink(&rotated, &path).unwrap();
        assert!(log.reopen().is_err());
    }
}
