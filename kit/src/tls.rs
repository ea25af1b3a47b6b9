//! TLS for the daemons' HTTP listeners (rustls with the ring provider, the same crypto the
//! media engine builds).
//!
//! Certificates and keys are read once at start; a bad file fails config validation with a
//! message naming it, never the first handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no usable PEM item of the expected kind.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        message: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("certificate/key rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Which of a listener's two TLS settings is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `tls_cert_file`.
    Cert,
    /// `tls_key_file`.
    Key,
}

/// Checks a listener's `tls_cert_file` / `tls_key_file` pair at start: both empty (plain
/// HTTP), or both set and usable (the files are read and the pair built now, so a bad file
/// fails validation rather than the first handshake).
pub fn check_settings(cert: &str, key: &str) -> Result<(), (Setting, String)> {
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => Ok(()),
        (false, false) => server_config(Path::new(cert), Path::new(key))
            .map(drop)
            .map_err(|e| (Setting::Cert, e.to_string())),
        (false, true) => Err((Setting::Key, "must be set when tls_cert_file is set".into())),
        (true, false) => Err((Setting::Cert, "must be set when tls_key_file is set".into())),
    }
}

/// Builds a server config for `cert` + `key` (PEM), offering HTTP/1.1 via ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(cert)?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_owned(),
        source,
    })?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Read {
            path: key.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::Pem {
            path: key.to_owned(),
            message: "no private key found".into(),
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)?;
    // HTTP/1.1 only: the listener (crate::listener) does not offer HTTP/2, and WebSocket
    // upgrades are HTTP/1.1 (RFC 8441 WebSockets over HTTP/2 are not served).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "no certificate found".into(),
        });
    }
    Ok(certs)
}
