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
    /// A PEM block that is not a certificate a root store accepts (what the TLS layer does
    /// with it, so `check` and `run` agree).
    #[error("ca_file {path}: certificate {index} is not a usable CA certificate")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Which certificate in the file, from 1.
        index: usize,
    },
    /// rustls rejected the protocol setup (not expected with the ring provider).
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// Reads every certificate in a PEM file; at least one is required, and each must load into
/// a rustls root store, exactly as the TLS layer ([`crate::imap::tls`]) loads it: `check` and
/// `run` then refuse the same files, and a reload cannot fail on a file `check` passed.
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
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|_| CaFileError::BadCertificate {
                path: path.to_path_buf(),
                index: i + 1,
            })?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #22 defect 3: a PEM block whose body is not a certificate passed `check` (which only
    /// parsed the PEM) and failed the rebuild (which loads it into a root store).
    #[test]
    fn a_pem_block_that_is_no_certificate_is_refused_as_the_tls_layer_would() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQoLDA0ODw==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(
            read_ca_file(&p),
            Err(CaFileError::BadCertificate { .. })
        ));
        assert!(crate::imap::tls::client_config(Some(&p)).is_err());
    }
}
