//! Certificate and CRL generation. No file I/O: callers get PEM text.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::{KeyType, PkiError, subject};

pub const DEFAULT_CA_DAYS: u32 = 3650;
pub const DEFAULT_SERVER_DAYS: u32 = 825;
pub const DEFAULT_CLIENT_DAYS: u32 = 365;
/// Longest validity accepted for anything: 100 years.
pub const MAX_DAYS: u32 = 36_500;

/// Certificates start a little in the past so that a peer whose clock lags
/// does not refuse a certificate issued a moment ago.
const BACKDATE: Duration = Duration::minutes(5);

/// The CA's certificate and key, loaded or freshly made.
pub struct Ca {
    pub cert_der: Vec<u8>,
    pub key: KeyPair,
}

/// What issuing produces: PEM texts to write and the facts for the index.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// Now, to the second: certificates carry no fractions, so neither does the index.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

pub fn check_days(days: u32) -> Result<(), PkiError> {
    if days == 0 || days > MAX_DAYS {
        return Err(PkiError::InvalidArgument {
            what: "--days",
            why: format!("{days}: must be between 1 and {MAX_DAYS}"),
        });
    }
    Ok(())
}

/// A random positive serial of 20 octets: the top bit is cleared so DER needs
/// no sign octet, and the next one set so the length is always 20.
pub fn random_serial() -> Result<[u8; 20], PkiError> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| PkiError::Generate(format!("random serial: {e}")))?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(bytes)
}

pub fn serial_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn serial_from_hex(hex: &str) -> Result<SerialNumber, PkiError> {
    let bad = || PkiError::Generate(format!("serial {hex:?} in the index is not hex"));
    if !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    Ok(SerialNumber::from_slice(&bytes))
}

fn base_params(serial: &[u8; 20], days: u32, now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.serial_number = Some(SerialNumber::from_slice(serial));
    p.not_before = now - BACKDATE;
    p.not_after = now + Duration::days(i64::from(days));
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

fn cn_only(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A self-signed CA: basicConstraints CA:TRUE, keyCertSign + cRLSign.
pub fn make_ca(cn: &str, days: u32, key_type: KeyType) -> Result<(Ca, String), PkiError> {
    check_days(days)?;
    let key = key_type.generate()?;
    let mut p = base_params(&random_serial()?, days, now());
    p.distinguished_name = cn_only(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key)?;
    let pem = cert.pem();
    Ok((
        Ca {
            cert_der: cert.der().to_vec(),
            key,
        },
        pem,
    ))
}

impl Ca {
    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(
            &CertificateDer::from(self.cert_der.as_slice()),
            &self.key,
        )?)
    }

    pub fn key_type(&self) -> KeyType {
        KeyType::of(&self.key).unwrap_or_default()
    }

    /// The parameters every leaf shares: serial, validity, CN, key usage
    /// for `key_type`, the one extended key usage, authority key id.
    fn leaf_params(
        name: &str,
        days: u32,
        key_type: KeyType,
        eku: ExtendedKeyUsagePurpose,
    ) -> Result<([u8; 20], CertificateParams), PkiError> {
        check_days(days)?;
        let serial = random_serial()?;
        let mut p = base_params(&serial, days, now());
        p.distinguished_name = cn_only(name);
        p.extended_key_usages = vec![eku];
        p.key_usages = leaf_key_usages(key_type);
        p.use_authority_key_identifier_extension = true;
        Ok((serial, p))
    }

    /// A server certificate: serverAuth, `name` and `dns` as DNS SANs, `ips`
    /// as IP SANs.
    pub fn issue_server(
        &self,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
        key_type: KeyType,
    ) -> Result<Issued, PkiError> {
        let (serial, mut p) =
            Self::leaf_params(name, days, key_type, ExtendedKeyUsagePurpose::ServerAuth)?;
        let mut sans = vec![SanType::DnsName(name.try_into()?)];
        for d in dns.iter().filter(|d| d.as_str() != name) {
            sans.push(SanType::DnsName(d.as_str().try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.subject_alt_names = sans;
        let key = key_type.generate()?;
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial_hex(&serial),
            not_after: p.not_after,
        })
    }

    /// A client certificate: clientAuth, CN = `name`, one OU per group.
    pub fn issue_client(
        &self,
        name: &str,
        groups: &[String],
        days: u32,
        key_type: KeyType,
    ) -> Result<Issued, PkiError> {
        let (serial, p) =
            Self::leaf_params(name, days, key_type, ExtendedKeyUsagePurpose::ClientAuth)?;
        let key = key_type.generate()?;
        let cert = p.signed_by(&key, &self.issuer()?)?;
        let der = if groups.is_empty() {
            cert.der().to_vec()
        } else {
            subject::with_groups_subject(cert.der(), groups, name, &self.key)?
        };
        Ok(Issued {
            cert_pem: pem_encode("CERTIFICATE", der),
            key_pem: key.serialize_pem(),
            serial: serial_hex(&serial),
            not_after: p.not_after,
        })
    }

    /// A CRL listing `revoked` (serial in hex, revocation time), valid `days`.
    pub fn sign_crl(
        &self,
        revoked: &[(String, OffsetDateTime)],
        number: u64,
        days: u32,
    ) -> Result<String, PkiError> {
        check_days(days)?;
        let now = now();
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at)| {
                Ok(RevokedCertParams {
                    serial_number: serial_from_hex(serial)?,
                    revocation_time: *at,
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + Duration::days(i64::from(days)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer()?)?.pem()?)
    }
}

/// RSA keys may also encipher keys (OpenVPN's older key exchange); EC and
/// Ed25519 keys only sign.
fn leaf_key_usages(key_type: KeyType) -> Vec<KeyUsagePurpose> {
    match key_type {
        KeyType::Rsa2048 => vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
        _ => vec![KeyUsagePurpose::DigitalSignature],
    }
}

pub fn pem_encode(tag: &str, der: Vec<u8>) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
