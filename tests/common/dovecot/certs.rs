//! The test CA and the server certificate it signs, made once per test process with the
//! `openssl` CLI, and the client TLS settings that trust only that CA.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use anyhow::{ensure, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// PEM texts of the test CA and of the server certificate and key it signed.
pub(super) struct Certs {
    pub(super) ca: String,
    pub(super) cert: String,
    pub(super) key: String,
}

/// Makes the certificates once per test process with the `openssl` CLI (~70 ms) and keeps them in
/// memory; each instance writes its own copies.
pub(super) fn certs() -> Result<&'static Certs> {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    if let Some(c) = CERTS.get() {
        return Ok(c);
    }
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(d, &["req", "-x509"])
        .args(ec)
        .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "3650"])
        .args(["-subj", "/CN=idlesync test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .run()?;
    openssl(d, &["req"])
        .args(ec)
        .args([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ])
        .run()?;
    // rustls (webpki) refuses a CA certificate as the server's own: the leaf must say CA:FALSE.
    fs::write(
        d.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
        ],
    )
    .args(["-set_serial", "2", "-days", "3650", "-extfile", "leaf.ext"])
    .args(["-out", "server.pem"])
    .run()?;
    let certs = Certs {
        ca: fs::read_to_string(d.join("ca.pem"))?,
        cert: fs::read_to_string(d.join("server.pem"))?,
        key: fs::read_to_string(d.join("server.key"))?,
    };
    Ok(CERTS.get_or_init(|| certs))
}

fn openssl(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args).stdin(Stdio::null());
    cmd
}

trait Run {
    fn run(&mut self) -> Result<()>;
}

impl Run for Command {
    fn run(&mut self) -> Result<()> {
        let out = self.output().with_context(|| format!("running {self:?}"))?;
        ensure!(
            out.status.success(),
            "{self:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

pub(super) fn client_tls_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
