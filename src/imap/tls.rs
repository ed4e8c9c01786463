//! rustls client configuration: webpki roots plus an optional private CA, ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A client config that verifies servers against webpki roots plus `ca_file`.
///
/// The ring provider is named explicitly: with two providers compiled in, rustls' implicit
/// default panics at run time.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, CaFileError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots
                .add(cert)
                .map_err(|_| CaFileError::NoCertificate(path.to_path_buf()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_garbage_ca_files_are_errors() {
        assert!(matches!(
            read_ca_file(Path::new("/nonexistent/ca.pem")),
            Err(CaFileError::Read { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a pem").unwrap();
        assert!(matches!(
            read_ca_file(&p),
            Err(CaFileError::NoCertificate(_))
        ));
    }

    #[test]
    fn default_config_builds() {
        assert!(client_config(None).is_ok());
    }
}
