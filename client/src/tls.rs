//! The client's TLS 1.3 configuration from a profile: the profile's CA as
//! the only trust anchor, the client certificate, ALPN `cvpn/1`.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::profile::{Profile, Remote};

pub fn client_config(profile: &Profile) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(profile.ca_pem.as_bytes()) {
        roots
            .add(c.context("<ca>: unreadable certificate")?)
            .context("<ca>")?;
    }
    if roots.is_empty() {
        bail!("<ca>: no certificate");
    }
    let chain = CertificateDer::pem_slice_iter(profile.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("<cert>: unreadable certificate")?;
    let key = PrivateKeyDer::from_pem_slice(profile.key_pem.as_bytes())
        .context("<key>: unreadable private key")?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("<cert>/<key>: the key does not fit the certificate")?;
    config.alpn_protocols = vec![cvpn_proto::ALPN.to_vec()];
    // The tunnel seals its records itself (cvpn_proto::tls).
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// The name checked on the gateway's certificate: `verify-x509-name`, else
/// the remote host (an IP SAN when the host is an address).
pub fn server_name(profile: &Profile, remote: &Remote) -> Result<ServerName<'static>> {
    let name = profile.verify_name.as_deref().unwrap_or(&remote.host);
    ServerName::try_from(name.to_string())
        .with_context(|| format!("{name:?} is not a valid server name"))
}
