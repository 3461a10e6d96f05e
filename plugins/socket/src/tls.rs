//! The TLS acceptor of TCP sources (rustls with the ring provider).

use std::path::Path;
use std::sync::Arc;

use tailrace_api::BuildError;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::TlsConfig;

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, BuildError> {
    let fail = |e: &dyn std::fmt::Display| {
        BuildError(format!("cannot read the {what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    if certs.is_empty() {
        return Err(fail(&"no PEM certificate in it"));
    }
    Ok(certs)
}

/// Reads the certificate, key and client authorities; fails with what is
/// wrong with which file.
pub(crate) fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, BuildError> {
    let certs = certificates(&config.cert_path, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&config.key_path).map_err(|e| {
        BuildError(format!(
            "cannot read the private key {}: {e}",
            config.key_path.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError(format!("cannot set up TLS: {e}")))?;
    let builder = match &config.client_ca_path {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "client CA certificate")? {
                roots.add(cert).map_err(|e| {
                    BuildError(format!(
                        "invalid client CA certificate in {}: {e}",
                        ca.display()
                    ))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    BuildError(format!("cannot verify clients with {}: {e}", ca.display()))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let server = builder.with_single_cert(certs, key).map_err(|e| {
        BuildError(format!(
            "the certificate {} and key {} cannot be used together: {e}",
            config.cert_path.display(),
            config.key_path.display()
        ))
    })?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
