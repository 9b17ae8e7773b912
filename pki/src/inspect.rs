//! Reading certificates back with x509-parser: what `show` prints and what
//! the gateway needs to know about a client.

use std::net::IpAddr;

use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use crate::issue::serial_hex;

#[derive(Clone, Debug, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
    pub groups: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub serial: String,
    pub is_ca: bool,
    pub extended_key_usages: Vec<&'static str>,
}

/// Who a client is, as the gateway sees it: CN, groups (Subject OU values)
/// and serial (for checking existing sessions against a reloaded CRL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub common_name: String,
    pub groups: Vec<String>,
    pub serial: String,
}

#[derive(Debug, thiserror::Error)]
#[error("unreadable certificate: {0}")]
pub struct InspectError(String);

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, InspectError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| InspectError(e.to_string()))?;
    if !rest.is_empty() {
        return Err(InspectError("trailing bytes after the certificate".into()));
    }
    Ok(cert)
}

fn cn_of(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string)
}

fn groups_of(name: &X509Name<'_>) -> Vec<String> {
    name.iter_organizational_unit()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_string)
        .collect()
}

/// A DER serial without the sign octet DER may add, in upper-case hex.
fn serial_text(raw: &[u8]) -> String {
    let trimmed = match raw {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => raw,
    };
    serial_hex(trimmed)
}

fn serial_of(cert: &X509Certificate<'_>) -> String {
    serial_text(cert.raw_serial())
}

pub fn inspect_cert(der: &[u8]) -> Result<CertInfo, InspectError> {
    let cert = parse(der)?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ip_addresses.push(IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ip_addresses.push(IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    let mut extended_key_usages = Vec::new();
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if eku.value.server_auth {
            extended_key_usages.push("serverAuth");
        }
        if eku.value.client_auth {
            extended_key_usages.push("clientAuth");
        }
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        common_name: cn_of(cert.subject()),
        groups: groups_of(cert.subject()),
        dns_names,
        ip_addresses,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        serial: serial_of(&cert),
        is_ca: cert.is_ca(),
        extended_key_usages,
    })
}

/// The identity of a client whose certificate the TLS layer has verified.
pub fn client_identity(der: &[u8]) -> Result<ClientIdentity, InspectError> {
    let cert = parse(der)?;
    Ok(ClientIdentity {
        common_name: cn_of(cert.subject())
            .ok_or_else(|| InspectError("the subject has no CN".into()))?,
        groups: groups_of(cert.subject()),
        serial: serial_of(&cert),
    })
}

/// The serials (upper-case hex) a DER CRL lists as revoked. The signature is
/// not checked here: rustls checks it for new handshakes; this list only
/// ends sessions that are already up.
pub fn crl_serials(der: &[u8]) -> Result<Vec<String>, InspectError> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let (_, crl) =
        CertificateRevocationList::from_der(der).map_err(|e| InspectError(e.to_string()))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| serial_text(r.raw_serial()))
        .collect())
}

/// What a CRL says of itself, checked against the CA that should sign it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlCheck {
    /// When the CRL stops being current (None: it does not say).
    pub next_update: Option<OffsetDateTime>,
    /// Its signature verifies with one of the CA certificates given.
    pub signed_by_ca: bool,
    /// Its CRL number, big-endian without leading zeros (empty: none or
    /// zero): of two CRLs of one CA, the higher number is the newer.
    pub number: Vec<u8>,
}

/// Parses a DER CRL and checks its signature against each CA certificate
/// in `cas` (DER).
pub fn check_crl(crl_der: &[u8], cas: &[&[u8]]) -> Result<CrlCheck, InspectError> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let (_, crl) =
        CertificateRevocationList::from_der(crl_der).map_err(|e| InspectError(e.to_string()))?;
    let mut signed_by_ca = false;
    for ca in cas {
        let ca = parse(ca)?;
        if ca.subject() == crl.issuer() && crl.verify_signature(ca.public_key()).is_ok() {
            signed_by_ca = true;
        }
    }
    let mut number = crl
        .crl_number()
        .map(|n| n.to_bytes_be())
        .unwrap_or_default();
    let zeros = number.iter().take_while(|b| **b == 0).count();
    number.drain(..zeros);
    Ok(CrlCheck {
        next_update: crl.next_update().map(|t| t.to_datetime()),
        signed_by_ca,
        number,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyType;
    use crate::issue::make_ca;

    #[test]
    fn client_groups_are_every_ou() {
        let (ca, _) = make_ca("test CA", 30, KeyType::EcdsaP256).unwrap();
        let groups = vec![
            "eng".to_string(),
            "ops".to_string(),
            "Site Reliability".to_string(),
        ];
        let issued = ca
            .issue_client("alice", &groups, 30, KeyType::EcdsaP256)
            .unwrap();
        let der = pem::parse(&issued.cert_pem).unwrap().into_contents();
        let id = client_identity(&der).unwrap();
        assert_eq!(id.common_name, "alice");
        assert_eq!(id.groups, groups);
        assert_eq!(id.serial, issued.serial);
        let info = inspect_cert(&der).unwrap();
        assert_eq!(info.extended_key_usages, vec!["clientAuth"]);
        assert!(!info.is_ca);
    }

    #[test]
    fn server_sans() {
        let (ca, _) = make_ca("test CA", 30, KeyType::Ed25519).unwrap();
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let issued = ca
            .issue_server(
                "vpn.example.com",
                &["alt.example.com".into()],
                &[ip],
                30,
                KeyType::Ed25519,
            )
            .unwrap();
        let der = pem::parse(&issued.cert_pem).unwrap().into_contents();
        let info = inspect_cert(&der).unwrap();
        assert_eq!(info.dns_names, vec!["vpn.example.com", "alt.example.com"]);
        assert_eq!(info.ip_addresses, vec![ip]);
        assert_eq!(info.extended_key_usages, vec!["serverAuth"]);
        assert!(info.serial.len() == 40 && info.serial.starts_with(['4', '5', '6', '7']));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(client_identity(&[]).is_err());
        assert!(client_identity(&[0x30, 0x82, 0xff, 0xff, 0x01]).is_err());
    }
}
