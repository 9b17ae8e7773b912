//! The CA's index: every certificate it issued, by serial, and its state.
//! Pure data; `store` reads and writes it atomically under a lock.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::PkiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    Server,
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertState {
    Valid,
    Revoked,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Upper-case hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub name: String,
    pub kind: CertKind,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub state: CertState,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl Entry {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.not_after <= now
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Number of the last CRL signed; each new CRL takes the next one.
    pub crl_number: u64,
    /// Validity of CRLs in days, as last chosen with `crl --days`.
    pub crl_days: u32,
    pub entries: Vec<Entry>,
}

pub const DEFAULT_CRL_DAYS: u32 = 180;

impl Default for Index {
    fn default() -> Self {
        Index {
            crl_number: 0,
            crl_days: DEFAULT_CRL_DAYS,
            entries: Vec::new(),
        }
    }
}

impl Index {
    /// The newest certificate issued under `name`, whatever its state.
    pub fn latest(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.name == name)
    }

    /// The certificate under `name` that is still valid (not revoked).
    pub fn active(&self, name: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.name == name && e.state == CertState::Valid)
    }

    /// A name may be issued again only once its certificate is revoked.
    pub fn check_can_issue(&self, name: &str) -> Result<(), PkiError> {
        match self.active(name) {
            Some(e) => Err(PkiError::AlreadyIssued {
                name: name.to_string(),
                serial: e.serial.clone(),
            }),
            None => Ok(()),
        }
    }

    pub fn contains_serial(&self, serial: &str) -> bool {
        self.entries.iter().any(|e| e.serial == serial)
    }

    /// Marks the valid certificate of `name` revoked at `at`.
    pub fn revoke(&mut self, name: &str, at: OffsetDateTime) -> Result<Entry, PkiError> {
        if self.latest(name).is_none() {
            return Err(PkiError::UnknownName(name.to_string()));
        }
        let entry = self
            .entries
            .iter_mut()
            .rev()
            .find(|e| e.name == name && e.state == CertState::Valid)
            .ok_or_else(|| PkiError::AlreadyRevoked(name.to_string()))?;
        entry.state = CertState::Revoked;
        entry.revoked_at = Some(at);
        Ok(entry.clone())
    }

    pub fn revoked(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| e.state == CertState::Revoked)
    }

    pub fn take_crl_number(&mut self) -> u64 {
        self.crl_number += 1;
        self.crl_number
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, serial: &str) -> Entry {
        Entry {
            serial: serial.into(),
            name: name.into(),
            kind: CertKind::Client,
            groups: vec![],
            not_after: OffsetDateTime::now_utc() + time::Duration::days(1),
            state: CertState::Valid,
            revoked_at: None,
        }
    }

    #[test]
    fn reissue_only_after_revoke() {
        let mut idx = Index::default();
        idx.entries.push(entry("alice", "01"));
        assert!(matches!(
            idx.check_can_issue("alice"),
            Err(PkiError::AlreadyIssued { .. })
        ));
        let now = OffsetDateTime::now_utc();
        assert_eq!(idx.revoke("alice", now).unwrap().serial, "01");
        idx.check_can_issue("alice").unwrap();
        assert!(matches!(
            idx.revoke("alice", now),
            Err(PkiError::AlreadyRevoked(_))
        ));
        assert!(matches!(
            idx.revoke("bob", now),
            Err(PkiError::UnknownName(_))
        ));
        idx.entries.push(entry("alice", "02"));
        assert_eq!(idx.active("alice").unwrap().serial, "02");
        assert_eq!(idx.revoked().count(), 1);
    }

    #[test]
    fn crl_numbers_increase() {
        let mut idx = Index::default();
        assert_eq!(idx.take_crl_number(), 1);
        assert_eq!(idx.take_crl_number(), 2);
    }

    #[test]
    fn json_round_trip() {
        let mut idx = Index::default();
        idx.entries.push(entry("a", "7F"));
        let text = serde_json::to_string(&idx).unwrap();
        let back: Index = serde_json::from_str(&text).unwrap();
        assert_eq!(back.entries[0].serial, "7F");
        assert_eq!(
            back.entries[0].not_after.unix_timestamp(),
            idx.entries[0].not_after.unix_timestamp()
        );
    }
}
