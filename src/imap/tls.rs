//! rustls client configuration: webpki roots plus an optional private CA, ring provider.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustls::pki_types::CertificateDer;

pub use crate::config::ca_file::{read_ca_file, CaFileError};

/// A client config that verifies servers against webpki roots plus `ca_file`.
///
/// Accounts whose `ca_file` holds the same certificates (or that have none) share one config:
/// each config holds its own copy of the ~150 webpki roots and a 256-entry TLS session cache,
/// tens of KiB apiece, which at thousands of accounts on one provider dominated idle memory
/// (issue #5). Sharing also means one session cache, so sessions can resume across accounts of
/// one host. The file is read on every call, so a changed `ca_file` gets a new config.
///
/// The ring provider is named explicitly: with two providers compiled in, rustls' implicit
/// default panics at run time.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, CaFileError> {
    type Shared = HashMap<Vec<CertificateDer<'static>>, Weak<rustls::ClientConfig>>;
    static SHARED: OnceLock<Mutex<Shared>> = OnceLock::new();
    let extra = match ca_file {
        Some(path) => read_ca_file(path)?,
        None => Vec::new(),
    };
    // Plain map operations cannot be left half-done by a panic: a poisoned lock is usable.
    let mut shared = SHARED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(config) = shared.get(&extra).and_then(Weak::upgrade) {
        return Ok(config);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &extra {
        roots.add(cert.clone()).map_err(|_| {
            CaFileError::NoCertificate(ca_file.map(Path::to_path_buf).unwrap_or_default())
        })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let config = Arc::new(config);
    shared.retain(|_, w| w.strong_count() > 0);
    shared.insert(extra, Arc::downgrade(&config));
    Ok(config)
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

    #[test]
    fn accounts_with_the_same_roots_share_one_config() {
        let a = client_config(None).unwrap();
        assert!(Arc::ptr_eq(&a, &client_config(None).unwrap()));
        // A self-signed CA, only ever parsed here.
        let ca = concat!(
            "-----BEGIN CERTIFICATE-----\n",
            "MIIBmDCCAT2gAwIBAgIUNp98m0iO21mYh2nW+MyUGMWWG9IwCgYIKoZIzj0EAwIw\n",
            "IDEeMBwGA1UEAwwVaWRsZXN5bmMgdW5pdC10ZXN0IENBMCAXDTI2MTEyNTE5NTY1\n",
            "OFoYDzIxMjYxMTAxMTk1NjU4WjAgMR4wHAYDVQQDDBVpZGxlc3luYyB1bml0LXRl\n",
            "c3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQgkIGO/YygoMh4NFI0YeGI\n",
            "RzlbdcvfqW2RCrPho+mbxlR26soTebrfx0GML/TLKHwvAwju56OgLHQmkx+a6iPs\n",
            "o1MwUTAdBgNVHQ4EFgQUTd7Ssnq5j9kb65u9UKGOocqSS/wwHwYDVR0jBBgwFoAU\n",
            "Td7Ssnq5j9kb65u9UKGOocqSS/wwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD\n",
            "AgNJADBGAiEAp7Ukh9d5dlsoUMkIHqC6cA0qviJbNxh/Ng1SQobp4I4CIQDZOs7v\n",
            "mabnw5VH13dicOMNfPjOESGJRciWBCT+rW8qZA==\n",
            "-----END CERTIFICATE-----\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, ca).unwrap();
        let c = client_config(Some(&p)).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(Arc::ptr_eq(&c, &client_config(Some(&p)).unwrap()));
        // Unused configs are not kept alive.
        let weak = Arc::downgrade(&c);
        drop(c);
        assert!(weak.upgrade().is_none());
    }
}
