use std::path::PathBuf;

/// Everything that can go wrong in the CA. Each variant names the file or
/// argument concerned so that a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("invalid group {group:?}: {why}")]
    InvalidGroup { group: String, why: &'static str },
    #[error("invalid {what}: {why}")]
    InvalidArgument { what: &'static str, why: String },
    #[error("{name:?} already has a valid certificate (serial {serial}); revoke it first")]
    AlreadyIssued { name: String, serial: String },
    #[error("no certificate named {0:?} in the index")]
    UnknownName(String),
    #[error("the certificate of {0:?} is already revoked")]
    AlreadyRevoked(String),
    #[error("{}: directory is not empty; init needs a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("{}: missing; run `cvpn-pki --dir DIR init` first", .0.display())]
    MissingCa(PathBuf),
    #[error("{}: corrupted: {why}", path.display())]
    Corrupted { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PkiError {
        let path = path.into();
        move |source| PkiError::Io { path, source }
    }

    pub(crate) fn corrupted(path: impl Into<PathBuf>, why: impl ToString) -> PkiError {
        PkiError::Corrupted {
            path: path.into(),
            why: why.to_string(),
        }
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Generate(e.to_string())
    }
}
