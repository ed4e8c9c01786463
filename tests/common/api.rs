//! A small HTTP/1.1 client for the API listener: one request per connection, JSON in and out.
//! No dependency beyond tokio: the API's answers always carry a `Content-Length`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The token tests configure (`[api] token_env = "IDLESYNC_TEST_API_TOKEN"` style helpers set
/// it through a file instead: see [`token_file`]).
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Writes [`TOKEN`] to a file in `dir` and returns its path, for `[api] token_file`.
pub fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("api-token");
    std::fs::write(&p, format!("{TOKEN}\n")).expect("write token file");
    p
}

/// An answer: status, headers (lower-case names) and the JSON body (`Null` when empty).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Value::String` holding the text when it is not JSON).
    pub body: Value,
}

impl Answer {
    /// `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A client for one API listener.
#[derive(Debug, Clone)]
pub struct Client {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The bearer token sent (`None`: no `Authorization` header).
    pub token: Option<String>,
}

impl Client {
    /// A client sending [`TOKEN`].
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            token: Some(TOKEN.to_string()),
        }
    }

    /// `method path` with `body` (JSON text, or empty) and extra headers.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer> {
        let mut s = tokio::net::TcpStream::connect(self.addr).await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        // A refused body may be answered before it is all read: a write error is fine then.
        let _ = s.write_all(body).await;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf))
            .await
            .context("API answer timed out")??;
        parse(&buf)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.call("GET", path, &[], b"").await
    }

    /// `method path` with a JSON body.
    pub async fn json(&self, method: &str, path: &str, body: &Value) -> Result<Answer> {
        self.call(method, path, &[], body.to_string().as_bytes())
            .await
    }
}

fn parse(buf: &[u8]) -> Result<Answer> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in {text:?}"))?;
    let mut lines = head.lines();
    let status_line = lines.next().context("empty answer")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()))
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}
