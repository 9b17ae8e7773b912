//! The TLS 1.3 server configuration: the endpoint's certificate, client
//! certificates required and verified against the client CA and the CRL,
//! ALPN `cvpn/1`.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

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

pub fn load_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    CertificateRevocationListDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// Builds the server configuration; any unreadable file is named.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&files.client_ca)? {
        roots.add(ca).map_err(|e| file_err(&files.client_ca, e))?;
    }
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if let Some(crl) = &files.crl {
        // An expired CRL refuses every client, as the managed service does:
        // revocation must not silently lapse.
        verifier = verifier
            .with_crls(vec![load_crl(crl)?])
            .enforce_revocation_expiration();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| file_err(&files.key, e))?;
    config.alpn_protocols = vec![cvpn_proto::ALPN.to_vec()];
    // The tunnel seals its records itself (cvpn_proto::tls) with the
    // secrets rustls negotiates; nothing resumes sessions.
    config.enable_secret_extraction = true;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}
