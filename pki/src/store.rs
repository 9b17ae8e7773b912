//! The CA directory: `ca.crt`, `ca.key`, `crl.pem`, `index.json`,
//! `issued/NAME.crt`, `private/NAME.key`. Every change happens under an
//! exclusive lock on `DIR/.lock` and every file is replaced atomically
//! (temporary file, fsync, rename), so concurrent invocations and crashes
//! never leave a torn index.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::index::DEFAULT_CRL_DAYS;
use crate::issue::{Ca, check_days, make_ca};
use crate::names::{validate_dns, validate_group, validate_name};
use crate::{CertInfo, CertKind, CertState, Entry, Index, KeyType, PkiError, inspect_cert};

/// What to issue: a server (with SANs) or a client (with groups).
pub enum Request<'a> {
    Server {
        dns: &'a [String],
        ips: &'a [IpAddr],
    },
    Client {
        groups: &'a [String],
    },
}

/// The CRL's dates, read back from `crl.pem`.
#[derive(Clone, Copy, Debug)]
pub struct CrlStatus {
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }
    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join("issued").join(format!("{name}.crt"))
    }
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join("private").join(format!("{name}.key"))
    }

    /// Creates the CA in a new or empty directory, with an empty CRL.
    pub fn init(&self, cn: &str, days: u32, key_type: KeyType) -> Result<(), PkiError> {
        if cn.trim().is_empty() || cn.len() > 64 {
            return Err(PkiError::InvalidArgument {
                what: "--cn",
                why: format!("{cn:?}: must be 1 to 64 characters"),
            });
        }
        check_days(days)?;
        if self.dir.exists() {
            let mut entries = fs::read_dir(&self.dir).map_err(PkiError::io(&self.dir))?;
            if entries.next().is_some() {
                return Err(PkiError::NotEmpty(self.dir.clone()));
            }
        }
        let (ca, ca_pem) = make_ca(cn, days, key_type)?;
        let mut index = Index::default();
        let crl = ca.sign_crl(&[], index.take_crl_number(), DEFAULT_CRL_DAYS)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(PkiError::io(&self.dir))?;
        let _lock = self.lock()?;
        for (sub, mode) in [("issued", 0o755), ("private", 0o700)] {
            let path = self.dir.join(sub);
            fs::DirBuilder::new()
                .mode(mode)
                .create(&path)
                .map_err(PkiError::io(&path))?;
        }
        write_atomic(
            &self.ca_key_path(),
            ca.key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_atomic(&self.ca_cert_path(), ca_pem.as_bytes(), 0o644)?;
        write_atomic(&self.crl_path(), crl.as_bytes(), 0o644)?;
        self.save_index(&index)
    }

    /// Issues a certificate and key for `name`; refuses a name that has a
    /// valid certificate.
    pub fn issue(
        &self,
        name: &str,
        req: Request<'_>,
        days: u32,
        key_type: Option<KeyType>,
    ) -> Result<Entry, PkiError> {
        let mut entries = self.issue_many(&[name.to_string()], req, days, key_type)?;
        entries
            .pop()
            .ok_or_else(|| PkiError::Generate("nothing issued".into()))
    }

    /// Issues several certificates under one lock and one index update
    /// (load tests need thousands). All names are checked before any is
    /// issued, so a refused batch changes nothing.
    pub fn issue_many(
        &self,
        names: &[String],
        req: Request<'_>,
        days: u32,
        key_type: Option<KeyType>,
    ) -> Result<Vec<Entry>, PkiError> {
        for name in names {
            validate_name(name)?;
        }
        check_days(days)?;
        match &req {
            Request::Server { dns, .. } => dns.iter().try_for_each(|d| validate_dns(d))?,
            Request::Client { groups } => groups.iter().try_for_each(|g| validate_group(g))?,
        }
        self.require_ca()?;
        let _lock = self.lock()?;
        let mut index = self.load_index()?;
        for name in names {
            index.check_can_issue(name)?;
        }
        let ca = self.load_ca()?;
        let key_type = key_type.unwrap_or_else(|| ca.key_type());
        let mut issued = Vec::with_capacity(names.len());
        for name in names {
            let (cert, entry) = self.make_one(&ca, &index, name, &req, days, key_type)?;
            index.entries.push(entry.clone());
            issued.push((cert, entry));
        }
        for (cert, entry) in &issued {
            write_atomic(&self.key_path(&entry.name), cert.key_pem.as_bytes(), 0o600)?;
            write_atomic(
                &self.cert_path(&entry.name),
                cert.cert_pem.as_bytes(),
                0o644,
            )?;
        }
        self.save_index(&index)?;
        Ok(issued.into_iter().map(|(_, e)| e).collect())
    }

    fn make_one(
        &self,
        ca: &Ca,
        index: &Index,
        name: &str,
        req: &Request<'_>,
        days: u32,
        key_type: KeyType,
    ) -> Result<(crate::issue::Issued, Entry), PkiError> {
        loop {
            let (issued, kind, groups) = match req {
                Request::Server { dns, ips } => (
                    ca.issue_server(name, dns, ips, days, key_type)?,
                    CertKind::Server,
                    Vec::new(),
                ),
                Request::Client { groups } => (
                    ca.issue_client(name, groups, days, key_type)?,
                    CertKind::Client,
                    dedup(groups),
                ),
            };
            // 158 random bits never collide in practice; the index is the
            // authority, so make sure anyway.
            if index.contains_serial(&issued.serial) {
                continue;
            }
            let entry = Entry {
                serial: issued.serial.clone(),
                name: name.to_string(),
                kind,
                groups,
                not_after: issued.not_after,
                state: CertState::Valid,
                revoked_at: None,
            };
            return Ok((issued, entry));
        }
    }

    /// Revokes the valid certificate of `name` and publishes a new CRL.
    pub fn revoke(&self, name: &str) -> Result<Entry, PkiError> {
        validate_name(name)?;
        self.require_ca()?;
        let _lock = self.lock()?;
        let mut index = self.load_index()?;
        let entry = index.revoke(name, crate::issue::now())?;
        let ca = self.load_ca()?;
        self.publish_crl(&ca, &mut index)?;
        Ok(entry)
    }

    /// Re-signs the CRL, valid `days` from now (default: as last chosen).
    pub fn resign_crl(&self, days: Option<u32>) -> Result<CrlStatus, PkiError> {
        if let Some(d) = days {
            check_days(d)?;
        }
        self.require_ca()?;
        let _lock = self.lock()?;
        let mut index = self.load_index()?;
        if let Some(d) = days {
            index.crl_days = d;
        }
        let ca = self.load_ca()?;
        self.publish_crl(&ca, &mut index)?;
        self.crl_status()
    }

    /// The CRL goes out before the index: a crash in between leaves the
    /// certificate refused, which a later `crl` reconciles, rather than a
    /// revoked certificate still accepted.
    fn publish_crl(&self, ca: &Ca, index: &mut Index) -> Result<(), PkiError> {
        let revoked: Vec<_> = index
            .revoked()
            .map(|e| (e.serial.clone(), e.revoked_at.unwrap_or(e.not_after)))
            .collect();
        let number = index.take_crl_number();
        let pem = ca.sign_crl(&revoked, number, index.crl_days)?;
        write_atomic(&self.crl_path(), pem.as_bytes(), 0o644)?;
        self.save_index(index)
    }

    /// The index, read under a shared lock.
    pub fn index(&self) -> Result<Index, PkiError> {
        self.require_ca()?;
        let lock = self.lock_file()?;
        lock.lock_shared()
            .map_err(PkiError::io(self.dir.join(".lock")))?;
        self.load_index()
    }

    pub fn crl_status(&self) -> Result<CrlStatus, PkiError> {
        let path = self.crl_path();
        let der = read_pem(&path, "X509 CRL")?;
        let (_, crl) =
            CertificateRevocationList::from_der(&der).map_err(|e| PkiError::corrupted(&path, e))?;
        Ok(CrlStatus {
            this_update: crl.last_update().to_datetime(),
            next_update: crl.next_update().map(|t| t.to_datetime()),
        })
    }

    /// The index entry and the parsed certificate of `name`.
    pub fn show(&self, name: &str) -> Result<(Entry, CertInfo), PkiError> {
        validate_name(name)?;
        let index = self.index()?;
        let entry = index
            .latest(name)
            .cloned()
            .ok_or_else(|| PkiError::UnknownName(name.to_string()))?;
        let path = self.cert_path(name);
        let der = read_pem(&path, "CERTIFICATE")?;
        let info = inspect_cert(&der).map_err(|e| PkiError::corrupted(&path, e))?;
        Ok((entry, info))
    }

    fn require_ca(&self) -> Result<(), PkiError> {
        for path in [self.ca_cert_path(), self.ca_key_path()] {
            if !path.exists() {
                return Err(PkiError::MissingCa(path));
            }
        }
        Ok(())
    }

    fn load_ca(&self) -> Result<Ca, PkiError> {
        let cert_path = self.ca_cert_path();
        let cert_der = read_pem(&cert_path, "CERTIFICATE")?;
        inspect_cert(&cert_der).map_err(|e| PkiError::corrupted(&cert_path, e))?;
        let key_path = self.ca_key_path();
        let key_text = fs::read_to_string(&key_path).map_err(PkiError::io(&key_path))?;
        let key = KeyPair::from_pem(&key_text).map_err(|e| PkiError::corrupted(&key_path, e))?;
        Ok(Ca { cert_der, key })
    }

    fn load_index(&self) -> Result<Index, PkiError> {
        let path = self.index_path();
        let text = fs::read_to_string(&path).map_err(PkiError::io(&path))?;
        serde_json::from_str(&text).map_err(|e| PkiError::corrupted(&path, e))
    }

    fn save_index(&self, index: &Index) -> Result<(), PkiError> {
        let mut text = serde_json::to_string_pretty(index)
            .map_err(|e| PkiError::Generate(format!("index: {e}")))?;
        text.push('\n');
        write_atomic(&self.index_path(), text.as_bytes(), 0o644)
    }

    fn lock_file(&self) -> Result<File, PkiError> {
        let path = self.dir.join(".lock");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(PkiError::io(&path))
    }

    /// Held for the whole of a change; released when dropped.
    fn lock(&self) -> Result<File, PkiError> {
        let file = self.lock_file()?;
        file.lock().map_err(PkiError::io(self.dir.join(".lock")))?;
        Ok(file)
    }
}

fn dedup(groups: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(groups.len());
    for g in groups {
        if !out.contains(g) {
            out.push(g.clone());
        }
    }
    out
}

/// The DER contents of the first PEM block labelled `label` in `path`.
pub fn read_pem(path: &Path, label: &str) -> Result<Vec<u8>, PkiError> {
    let text = fs::read(path).map_err(PkiError::io(path))?;
    let block = pem::parse(&text).map_err(|e| PkiError::corrupted(path, e))?;
    if block.tag() != label {
        return Err(PkiError::corrupted(
            path,
            format!("expected a PEM block {label:?}, found {:?}", block.tag()),
        ));
    }
    Ok(block.into_contents())
}

/// Replaces `path` with `data`: a crash leaves either the old or the new file.
/// The data goes to a new file, created with `mode` (never through a
/// symlink or into a file someone else created), then renamed over `path`;
/// a symlink at `path` is replaced, its target untouched.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag).map_err(|e| PkiError::Generate(format!("randomness: {e}")))?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_file_name(format!(".{name}.{tag}.tmp"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // create_new applied `mode` through the umask; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(PkiError::io(path))
}
