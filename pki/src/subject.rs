//! Subjects with several OU values.
//!
//! rcgen's DistinguishedName keeps one value per attribute type (rcgen issue
//! 81), but a client's groups are several OU values. rcgen builds and signs
//! the certificate; this module swaps in the full subject and re-signs the
//! TBSCertificate with the same issuer key and algorithm.

use rcgen::SigningKey;
use x509_cert::Certificate;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::der::asn1::{Any, BitString, ObjectIdentifier, SetOfVec};
use x509_cert::der::{Decode, Encode, Tag};
use x509_cert::name::{RdnSequence, RelativeDistinguishedName};

use crate::PkiError;

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");

/// Returns `cert_der` with its subject replaced by `OU=g1, OU=g2, ..., CN=cn`
/// (one RDN per value, as OpenSSL writes `/OU=g1/OU=g2/CN=cn`), signed anew.
pub(crate) fn with_groups_subject(
    cert_der: &[u8],
    groups: &[String],
    cn: &str,
    issuer_key: &impl SigningKey,
) -> Result<Vec<u8>, PkiError> {
    let der_err = |e: x509_cert::der::Error| PkiError::Generate(format!("subject rewrite: {e}"));
    let mut cert = Certificate::from_der(cert_der).map_err(der_err)?;
    let mut rdns = Vec::with_capacity(groups.len() + 1);
    for g in groups {
        rdns.push(rdn(OID_OU, g).map_err(der_err)?);
    }
    rdns.push(rdn(OID_CN, cn).map_err(der_err)?);
    cert.tbs_certificate.subject = RdnSequence(rdns);
    let tbs = cert.tbs_certificate.to_der().map_err(der_err)?;
    let signature = issuer_key.sign(&tbs)?;
    cert.signature = BitString::from_bytes(&signature).map_err(der_err)?;
    cert.to_der().map_err(der_err)
}

fn rdn(
    oid: ObjectIdentifier,
    value: &str,
) -> Result<RelativeDistinguishedName, x509_cert::der::Error> {
    let value = Any::new(Tag::Utf8String, value.as_bytes())?;
    let set = SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }])?;
    Ok(RelativeDistinguishedName(set))
}
