//! TLS for the one listener (config `tls`): rustls with the ring provider, certificates from PEM
//! files. The acceptor's configuration can be replaced while running (SIGHUP), so renewed
//! certificates take effect for new connections without a restart.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// Accepts TLS connections with the current certificate.
#[derive(Clone)]
pub(crate) struct Acceptor(Arc<RwLock<Arc<ServerConfig>>>);

impl Acceptor {
    /// Loads the certificate chain and key named by `tls`.
    pub(crate) fn new(tls: &TlsConfig) -> Result<Self, String> {
        Ok(Self(Arc::new(RwLock::new(load(tls)?))))
    }

    /// Uses `next` (from [`load`]) for new connections.
    pub(crate) fn install(&self, next: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = next;
    }

    pub(crate) async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let config = Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner));
        tokio_rustls::TlsAcceptor::from(config).accept(stream).await
    }
}

/// Reads and checks the certificate chain and key `tls` names.
pub(crate) fn load(tls: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| format!("tls.key_file: cannot read a private key from {}: {e}", tls.key_file.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: the certificate and key do not form a usable pair: {e}"))?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("tls.cert_file: cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert_file: {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.cert_file: {} holds no certificate", path.display()));
    }
    Ok(certs)
}
