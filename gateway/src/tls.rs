//! The TLS 1.3 server configuration: the endpoint's certificate, client
//! certificates required and verified against the client CA and the CRL,
//! with the clientAuth extended key usage, ALPN `cvpn/1`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};

use crate::config::{TlsFiles, TlsVersion};

/// A TLS file that cannot be used, or a configuration rustls refuses.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file named cannot be read or used.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// The crypto provider of every TLS configuration of the endpoint.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every PEM certificate in `path`; none is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The PEM CRL in `path`.
pub fn load_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    CertificateRevocationListDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// The certificate a client presented, as far as it could be read: logged
/// with a refusal, whatever the reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presented {
    /// The subject's CN, if any.
    pub common_name: Option<String>,
    /// The serial, upper-case hex.
    pub serial: Option<String>,
}

/// Where one connection's verifier leaves what the client presented.
pub type PresentedSlot = Arc<Mutex<Option<Presented>>>;

/// The endpoint's side of every handshake: its certificate and the client
/// verifier, built once from the files; each connection gets a
/// configuration of its own (cheap: shared parts) so the certificate a
/// refused client presented can be logged.
#[derive(Debug)]
pub struct Acceptor {
    verifier: Arc<dyn ClientCertVerifier>,
    cert: Arc<CertifiedKey>,
    openvpn_min: TlsVersion,
}

impl Acceptor {
    /// Reads and checks the TLS files; any unusable file is named.
    pub fn new(files: &TlsFiles) -> Result<Acceptor, TlsError> {
        let crl = files.crl.as_deref().map(load_crl).transpose()?;
        Acceptor::with_crl(files, crl)
    }

    /// The same with `crl` in place of `tls.crl`'s (a cluster's newer
    /// one).
    pub fn with_crl(
        files: &TlsFiles,
        crl: Option<CertificateRevocationListDer<'static>>,
    ) -> Result<Acceptor, TlsError> {
        let chain = load_certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, e))?;
        let cert =
            CertifiedKey::from_der(chain, key, &provider()).map_err(|e| file_err(&files.key, e))?;
        let mut roots = RootCertStore::empty();
        for ca in load_certs(&files.client_ca)? {
            roots.add(ca).map_err(|e| file_err(&files.client_ca, e))?;
        }
        let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        if let Some(crl) = crl {
            // An expired CRL refuses every client, as the managed service
            // does: revocation must not silently lapse.
            verifier = verifier
                .with_crls(vec![crl])
                .enforce_revocation_expiration();
        }
        let verifier = verifier
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Acceptor {
            verifier,
            cert: Arc::new(cert),
            openvpn_min: files.min_version,
        })
    }

    /// A configuration for one connection, and where its verifier leaves
    /// the certificate the client presented.
    pub fn for_connection(&self) -> Result<(Arc<ServerConfig>, PresentedSlot), TlsError> {
        let (mut config, slot) = self.config(&[&rustls::version::TLS13])?;
        config.alpn_protocols = vec![cvpn_proto::ALPN.to_vec()];
        // The tunnel seals its records itself (cvpn_proto::tls) with the
        // secrets rustls negotiates; nothing resumes sessions.
        config.enable_secret_extraction = true;
        Ok((Arc::new(config), slot))
    }

    /// The same for an OpenVPN client: its TLS runs inside the control
    /// channel and names no ALPN protocol; data keys come from the TLS
    /// exporter or the PRF, so no secret leaves rustls. TLS 1.2 is taken
    /// unless `[tls] min_version` says 1.3 (OpenVPN 3 with mbed TLS and
    /// routers' clients have nothing newer), only with ECDHE, AEAD suites
    /// and the extended master secret.
    pub fn for_openvpn(&self) -> Result<(Arc<ServerConfig>, PresentedSlot), TlsError> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.openvpn_min {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let (mut config, slot) = self.config(versions)?;
        config.require_ems = true;
        Ok((Arc::new(config), slot))
    }

    fn config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<(ServerConfig, PresentedSlot), TlsError> {
        let slot = PresentedSlot::default();
        let verifier = Arc::new(ClientAuthRequired {
            inner: self.verifier.clone(),
            presented: slot.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(self.cert.clone())));
        config.send_tls13_tickets = 0;
        // Nothing resumes sessions (TLS 1.2 session ids neither).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok((config, slot))
    }
}

/// Whether a TLS failure says that the client offers no protocol version
/// the endpoint takes.
pub fn is_version_mismatch(error: &str) -> bool {
    error.contains("SupportedVersionsExtensionRequired")
        || error.contains("ProtocolVersion")
        || error.contains("protocol version")
}

/// The CA and CRL checks of webpki, plus what webpki lets pass: a client
/// certificate without any extended key usage (OpenVPN's `remote-cert-tls
/// client` refuses it too). Records the presented certificate's CN and
/// serial for the refusal's log line.
#[derive(Debug)]
struct ClientAuthRequired {
    inner: Arc<dyn ClientCertVerifier>,
    presented: PresentedSlot,
}

impl ClientCertVerifier for ClientAuthRequired {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let info = cvpn_pki::inspect_cert(end_entity).ok();
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) = Some(Presented {
            common_name: info.as_ref().and_then(|i| i.common_name.clone()),
            serial: info.as_ref().map(|i| i.serial.clone()),
        });
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match info {
            Some(i) if i.extended_key_usages.contains(&"clientAuth") => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Builds a server configuration for a single connection (benches and
/// tools that need no refusal details).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(Acceptor::new(files)?.for_connection()?.0)
}

/// What the endpoint's CRL is worth, beyond being signed by the client CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrlHealth {
    /// Current: revoked certificates are refused.
    Current,
    /// No `tls.crl`: revoked client certificates are not refused.
    Absent,
    /// Past its next update: every client is refused until it is re-signed.
    Expired(time::OffsetDateTime),
}

impl std::fmt::Display for CrlHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrlHealth::Current => f.write_str("the CRL is current"),
            CrlHealth::Absent => {
                f.write_str("tls.crl is not set: revoked client certificates are not refused")
            }
            CrlHealth::Expired(at) => write!(
                f,
                "tls.crl expired at {at}: every client is refused until it is re-signed (cvpn-pki crl)"
            ),
        }
    }
}

/// A CRL's number (see `cvpn_pki::CrlCheck::number`) and revoked serials,
/// if it is signed by the client CA. Err: why it cannot be taken.
pub fn crl_facts(files: &TlsFiles, der: &[u8]) -> Result<(Vec<u8>, Vec<String>), String> {
    let cas = load_certs(&files.client_ca).map_err(|e| e.to_string())?;
    let cas: Vec<&[u8]> = cas.iter().map(|c| c.as_ref()).collect();
    let check = cvpn_pki::check_crl(der, &cas).map_err(|e| format!("not a CRL: {e}"))?;
    if !check.signed_by_ca {
        return Err(format!(
            "not signed by the client CA {}",
            files.client_ca.display()
        ));
    }
    let revoked = cvpn_pki::crl_serials(der).map_err(|e| format!("not a CRL: {e}"))?;
    Ok((check.number, revoked))
}

/// Checks the CRL against the client CA before the endpoint relies on it.
/// A CRL signed by another CA would refuse every client: an error.
pub fn check_crl(files: &TlsFiles) -> Result<CrlHealth, TlsError> {
    let Some(path) = &files.crl else {
        return Ok(CrlHealth::Absent);
    };
    let crl = load_crl(path)?;
    let cas = load_certs(&files.client_ca)?;
    let cas: Vec<&[u8]> = cas.iter().map(|c| c.as_ref()).collect();
    let check = cvpn_pki::check_crl(crl.as_ref(), &cas).map_err(|e| file_err(path, e))?;
    if !check.signed_by_ca {
        return Err(file_err(
            path,
            format!(
                "not signed by the client CA {}: every client would be refused",
                files.client_ca.display()
            ),
        ));
    }
    Ok(match check.next_update {
        Some(next) if next < time::OffsetDateTime::now_utc() => CrlHealth::Expired(next),
        _ => CrlHealth::Current,
    })
}
