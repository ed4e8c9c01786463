//! OAuth2 for tests: a token-introspection endpoint on 127.0.0.1 that Dovecot's `oauth2` passdb
//! asks, the Dovecot settings that point at it, and token commands for idlesync's config.
//!
//! Dovecot 2.3 checks XOAUTH2 and OAUTHBEARER with `passdb { driver = oauth2 }`. With
//! `introspection_mode = auth` it sends `GET <introspection_url>` with `Authorization: Bearer
//! <token>`; this endpoint answers `{"username": ..., "active": "true"}` for a token it was told
//! to accept, and 401 otherwise.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The introspection endpoint. Dropping it stops it.
pub struct Introspection {
    /// Where it listens.
    addr: SocketAddr,
    /// token → user name, for the tokens currently accepted.
    tokens: Arc<Mutex<HashMap<String, String>>>,
    /// Requests answered, accepted or not.
    requests: Arc<Mutex<u64>>,
    /// The accept loop.
    task: JoinHandle<()>,
    /// Holds the Dovecot-side settings file (world-readable: Dovecot's auth process reads it).
    dir: tempfile::TempDir,
}

impl Drop for Introspection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Introspection {
    pub async fn start() -> Result<Introspection> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let tokens: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let requests: Arc<Mutex<u64>> = Arc::default();
        let task = tokio::spawn({
            let tokens = tokens.clone();
            let requests = requests.clone();
            async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let tokens = tokens.clone();
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                        }
                        let head = String::from_utf8_lossy(&buf);
                        let token = head.lines().find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("authorization")
                                .then(|| value.trim().strip_prefix("Bearer "))?
                                .map(str::to_string)
                        });
                        *requests.lock().unwrap() += 1;
                        let user = token.and_then(|t| tokens.lock().unwrap().get(&t).cloned());
                        let (status, body) = match user {
                            Some(u) => {
                                ("200 OK", format!(r#"{{"username":"{u}","active":"true"}}"#))
                            }
                            None => (
                                "401 Unauthorized",
                                r#"{"error":"invalid_token"}"#.to_string(),
                            ),
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(resp.as_bytes()).await;
                        let _ = s.shutdown().await;
                    });
                }
            }
        });
        let dir = tempfile::tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let conf = dir.path().join("dovecot-oauth2.conf.ext");
        std::fs::write(
            &conf,
            format!(
                "introspection_url = http://{addr}/introspect\n\
                 introspection_mode = auth\n\
                 username_attribute = username\n\
                 active_attribute = active\n\
                 active_value = true\n"
            ),
        )?;
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644))?;
        Ok(Introspection {
            addr,
            tokens,
            requests,
            task,
            dir,
        })
    }

    /// Accept `token` for `user` from now on.
    pub fn accept(&self, token: &str, user: &str) {
        self.tokens
            .lock()
            .unwrap()
            .insert(token.to_string(), user.to_string());
    }

    /// Stop accepting `token`.
    pub fn revoke(&self, token: &str) {
        self.tokens.lock().unwrap().remove(token);
    }

    /// Requests Dovecot made so far.
    pub fn requests(&self) -> u64 {
        *self.requests.lock().unwrap()
    }

    /// `DovecotOptions::extra_config` enabling XOAUTH2 and OAUTHBEARER against this endpoint.
    pub fn dovecot_config(&self) -> String {
        format!(
            "auth_mechanisms = plain login xoauth2 oauthbearer\n\
             passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n}}\n",
            self.dir.path().join("dovecot-oauth2.conf.ext").display()
        )
    }
}

/// A token command for idlesync's config: a script in `dir` that counts its runs in
/// `<dir>/<name>.runs` and prints `{"access_token":"<prefix>-<run>","expires_in":3600}` (or
/// `<prefix>-<run>` alone when `json` is false).
pub fn token_script(
    dir: &Path,
    name: &str,
    prefix: &str,
    json: bool,
) -> Result<(PathBuf, PathBuf)> {
    let script = dir.join(format!("{name}.sh"));
    let runs = dir.join(format!("{name}.runs"));
    let print = if json {
        format!(r#"printf '{{"access_token":"{prefix}-%s","expires_in":3600}}\n' "$n""#)
    } else {
        format!(r#"printf '{prefix}-%s\n' "$n""#)
    };
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\nn=$(cat '{runs}' 2>/dev/null || echo 0)\nn=$((n + 1))\n\
             echo \"$n\" > '{runs}'\n{print}\n",
            runs = runs.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok((script, runs))
}

/// How often a [`token_script`] ran.
pub fn runs(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
