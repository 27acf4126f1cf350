//! Why a TLS configuration could not be built: every variant names the file.

use std::path::PathBuf;

/// A certificate, key or CA file that cannot be used. `--check` prints these.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not a valid X.509 certificate: {message}", path.display())]
    BadCertificate { path: PathBuf, message: String },
    #[error("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: unusable private key: {source}", path.display())]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "{}: the private key does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: no usable CA certificate in the file ({ignored} could not be parsed)", path.display())]
    NoCaCertificates { path: PathBuf, ignored: usize },
    #[error("{}: the certificate expired on {not_after}; the current one is kept", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("no system root certificates ({message}): install the ca-certificates package or set tls_ca_file")]
    NoSystemRoots { message: String },
    #[error("invalid TLS server name {name:?}: give a DNS name or an IP address")]
    BadServerName { name: String },
    #[error("{}: {message}", path.display())]
    Unusable { path: PathBuf, message: String },
    #[error("TLS setup failed: {0}")]
    Crypto(#[source] rustls::Error),
}

impl TlsError {
    /// The file the error is about, when there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            TlsError::Read { path, .. }
            | TlsError::Pem { path, .. }
            | TlsError::NoCertificate { path }
            | TlsError::BadCertificate { path, .. }
            | TlsError::NoKey { path }
            | TlsError::BadKey { path, .. }
            | TlsError::NoCaCertificates { path, .. }
            | TlsError::Expired { path, .. }
            | TlsError::Unusable { path, .. } => Some(path),
            TlsError::KeyMismatch { key, .. } => Some(key),
            TlsError::NoSystemRoots { .. }
            | TlsError::BadServerName { .. }
            | TlsError::Crypto(_) => None,
        }
    }
}
