//! Reading an account's `ca_file`: the config owns reading files, so that `check` can refuse
//! an unusable one and the TLS layer can build on what it read.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The `ca_file` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// Not readable.
    #[error("cannot read ca_file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Readable but holds no usable PEM certificate.
    #[error("ca_file {0} holds no valid PEM certificate")]
    NoCertificate(PathBuf),
    /// rustls rejected the protocol setup (not expected with the ring provider).
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// Reads every certificate in a PEM file; at least one is required.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let bytes = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| CaFileError::NoCertificate(path.to_path_buf()))?;
    if certs.is_empty() {
        return Err(CaFileError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}
