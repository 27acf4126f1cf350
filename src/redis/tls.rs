//! TLS to Redis (`rediss://`): the CA file, and the rustls crypto provider.
//!
//! redis-rs enables rustls without a crypto provider and builds its client
//! config with `ClientConfig::builder()`, which uses the process-wide default
//! provider. Exactly one provider is compiled into this crate (its
//! `crypto-ring` or `crypto-aws-lc-rs` feature); [`ensure_provider`] installs
//! it as the default before the first TLS connection, so a build that
//! (wrongly) enables both still works instead of panicking at connect time.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a PEM certificate file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} holds no PEM certificate")]
    Empty { path: PathBuf },
}

/// Reads a PEM CA file and checks that it holds at least one certificate.
/// Returns the file's bytes (redis-rs parses them again).
pub fn read_ca(path: &Path) -> Result<Vec<u8>, CaFileError> {
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaFileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(pem)
}

/// Installs the compiled-in rustls provider as the process default, unless one
/// is installed already (by this crate's other TLS users or the embedding
/// application). Returns whether a default provider is in place.
pub fn ensure_provider() -> bool {
    if rustls::crypto::CryptoProvider::get_default().is_some() {
        return true;
    }
    #[cfg(feature = "crypto-ring")]
    let provider = Some(rustls::crypto::ring::default_provider());
    #[cfg(all(feature = "crypto-aws-lc-rs", not(feature = "crypto-ring")))]
    let provider = Some(rustls::crypto::aws_lc_rs::default_provider());
    #[cfg(not(any(feature = "crypto-ring", feature = "crypto-aws-lc-rs")))]
    let provider: Option<rustls::crypto::CryptoProvider> = None;
    if let Some(p) = provider {
        // Losing a race with another installer is fine: there is a default.
        let _ = p.install_default();
    }
    rustls::crypto::CryptoProvider::get_default().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(read_ca(&missing), Err(CaFileError::Read { .. })));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = read_ca(&empty).unwrap_err();
        assert!(e.to_string().contains("empty.pem"), "{e}");
    }
}
