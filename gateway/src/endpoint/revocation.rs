//! The CRL in force: `tls.crl`'s, or a newer one of the same CA that a
//! cluster's other node published. Of two CRLs the higher CRL number
//! wins; one not signed by the client CA is refused.

use std::sync::Arc;

use rustls::pki_types::CertificateRevocationListDer;
use tracing::info;

use super::Endpoint;
use crate::tls;

/// Where an offered CRL comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `tls.crl`, changed by an administrator: taken unless older (a CRL
    /// re-signed without a new number, or one without numbers, still
    /// applies).
    File,
    /// Another node of the cluster: taken only when higher.
    Cluster,
}

/// What became of a CRL offered to the endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// It is in force now; this many sessions of revoked certificates
    /// were ended.
    Newer(usize),
    /// The one in force is as new or newer: nothing changed.
    NotNewer,
}

/// The CRL in force: its number and DER.
#[derive(Clone, Debug, Default)]
pub struct CrlInForce {
    /// Big-endian, without leading zeros.
    pub number: Vec<u8>,
    /// The CRL itself.
    pub der: Vec<u8>,
}

/// Whether CRL number `a` is higher than `b` (both big-endian without
/// leading zeros).
pub fn higher(a: &[u8], b: &[u8]) -> bool {
    (a.len(), a) > (b.len(), b)
}

impl Endpoint {
    /// Takes `der` as the endpoint's CRL if it is signed by the client CA
    /// and newer than the one in force: new handshakes use it at once and
    /// sessions of certificates it revokes end. Err: why it was refused.
    pub fn take_crl(&self, der: &[u8], source: Source) -> Result<Taken, String> {
        let config = self.config();
        let (number, revoked) = tls::crl_facts(&config.tls, der)?;
        let mut in_force = self.crl.lock().unwrap_or_else(|p| p.into_inner());
        let newer = |current: &CrlInForce| match source {
            Source::File => !higher(&current.number, &number),
            Source::Cluster => higher(&number, &current.number),
        };
        if let Some(current) = in_force.as_ref()
            && !newer(current)
        {
            return Ok(Taken::NotNewer);
        }
        let acceptor = tls::Acceptor::with_crl(
            &config.tls,
            Some(CertificateRevocationListDer::from(der.to_vec())),
        )
        .map_err(|e| e.to_string())?;
        self.tls.store(Arc::new(acceptor));
        *in_force = Some(CrlInForce {
            number: number.clone(),
            der: der.to_vec(),
        });
        drop(in_force);
        info!(crl_number = %hex(&number), revoked = revoked.len(), "CRL in force");
        Ok(Taken::Newer(self.end_revoked(&revoked)))
    }

    /// The CRL in force, if any.
    pub fn crl_in_force(&self) -> Option<CrlInForce> {
        self.crl.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A CRL number as logged.
pub fn hex(number: &[u8]) -> String {
    if number.is_empty() {
        return "0".into();
    }
    number.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use cvpn_pki::KeyType;
    use cvpn_pki::store::{Request, Store};

    use super::higher;
    use crate::config::TlsFiles;
    use crate::tls::{crl_facts, load_crl};

    fn ca(dir: &std::path::Path, cn: &str) -> Store {
        let store = Store::new(dir);
        store.init(cn, 30, KeyType::EcdsaP256).unwrap();
        store
    }

    #[test]
    fn a_crl_counts_only_from_the_client_ca_and_revoking_raises_its_number() {
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ours, theirs) = (ca(ours.path(), "Our CA"), ca(theirs.path(), "Their CA"));
        let files = TlsFiles {
            cert: ours.ca_cert_path(),
            key: ours.ca_cert_path(),
            client_ca: ours.ca_cert_path(),
            crl: None,
            tls_crypt: None,
            min_version: crate::config::TlsVersion::Tls12,
            reneg: crate::config::DEFAULT_RENEG,
        };
        let der = |s: &Store| load_crl(&s.crl_path()).unwrap().as_ref().to_vec();
        let (first, revoked) = crl_facts(&files, &der(&ours)).unwrap();
        assert!(revoked.is_empty());
        let why = crl_facts(&files, &der(&theirs)).unwrap_err();
        assert!(why.contains("not signed by the client CA"), "{why}");
        assert!(
            crl_facts(&files, b"not a CRL")
                .unwrap_err()
                .contains("not a CRL")
        );
        ours.issue("bob", Request::Client { groups: &[] }, 30, None)
            .unwrap();
        ours.revoke("bob").unwrap();
        let (second, revoked) = crl_facts(&files, &der(&ours)).unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(higher(&second, &first), "{second:?} after {first:?}");
    }

    #[test]
    fn the_higher_number_wins_whatever_its_length() {
        assert!(higher(&[2], &[1]));
        assert!(higher(&[1, 0], &[0xff]));
        assert!(higher(&[1], &[]));
        assert!(!higher(&[1], &[1]));
        assert!(!higher(&[0xff], &[1, 0]));
    }
}
