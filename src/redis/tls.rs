//! TLS to Redis (`rediss://`): the CA file. (redis-rs builds its rustls
//! configuration on the process default provider, which the connection code
//! installs first: the proxy's one provider, see `crate::tls`.)

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
