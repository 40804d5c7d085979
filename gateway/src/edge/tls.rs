//! HTTPS: the certificate chain and private key read at start into a rustls acceptor
//! (ring, the crypto provider the NATS and HTTP clients already use), offering h2 and
//! HTTP/1.1 by ALPN.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS acceptor serving the PEM certificate chain `cert_file` with the PEM private key
/// `key_file`; an error naming the file when either cannot be read or used.
pub fn load_acceptor(cert_file: &Path, key_file: &Path) -> anyhow::Result<TlsAcceptor> {
    let cert_pem = std::fs::read(cert_file)
        .with_context(|| format!("cannot read tls_cert_file {}", cert_file.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls_cert_file {} is not valid PEM", cert_file.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "tls_cert_file {} holds no certificate",
        cert_file.display()
    );
    let key_pem = std::fs::read(key_file)
        .with_context(|| format!("cannot read tls_key_file {}", key_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).with_context(|| {
        format!(
            "tls_key_file {} holds no PEM private key",
            key_file.display()
        )
    })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("the TLS provider offers no safe protocol version")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "tls_key_file {} does not match tls_cert_file {} (or is not a usable key)",
                key_file.display(),
                cert_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
