//! HTTPS for the viewer (`--tls-cert`, `--tls-key`): a certificate chain and its private key,
//! both PEM files, read once at start.
//!
//! Browsers speak HTTP/2 only over TLS, and only HTTP/2 lets one page stream every camera
//! live: over HTTP/1.1 a browser opens at most six connections to a host and every MJPEG
//! stream holds one. The server offers `h2` and `http/1.1` by ALPN; a client that offers
//! neither gets HTTP/1.1.

use std::{fmt, path::Path, sync::Arc};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio_rustls::TlsAcceptor;

use crate::ViewerError;

/// What the viewer's HTTPS needs: the server's certificate and key, and the protocols offered.
#[derive(Clone)]
pub struct TlsConfig(Arc<ServerConfig>);

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").field("alpn", &["h2", "http/1.1"]).finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads the certificate chain (`cert`: the server's certificate first, then any
    /// intermediates) and the private key (`key`: PKCS#8, PKCS#1 or SEC1), both PEM.
    ///
    /// # Errors
    ///
    /// [`ViewerError::Tls`] naming the file and what is wrong with it: missing, unreadable,
    /// no certificate or key in it, or a key that is not the certificate's.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, ViewerError> {
        let err = |path: &Path, reason: String| ViewerError::Tls { path: path.to_owned(), reason };
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| err(cert, pem_reason(e, "certificate")))?;
        if certs.is_empty() {
            return Err(err(cert, "has no certificate (-----BEGIN CERTIFICATE-----)".into()));
        }
        let private_key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| err(key, pem_reason(e, "private key")))?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| err(cert, e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(certs, private_key)
                .map_err(|e| {
                    err(
                        key,
                        format!("cannot be used with the certificate in {}: {e}", cert.display()),
                    )
                })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self(Arc::new(config)))
    }

    /// Accepts TLS connections with this configuration.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.0))
    }
}

fn pem_reason(e: rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("cannot be read: {e}"),
        Error::NoItemsFound => format!("has no {what} in PEM form"),
        e => format!("is not a valid PEM {what} file: {e}"),
    }
}
