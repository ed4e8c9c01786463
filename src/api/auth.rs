//! Bearer tokens: every request carries `Authorization: Bearer <token>`; a missing, malformed
//! or wrong one is the same `401`, and the comparison takes the same time whichever it was.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::secrets::Secret;

/// The tokens in force; replaced on reload, so a token can be rotated without a restart.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<RwLock<Vec<Secret>>>);

impl Tokens {
    /// Tokens from the config's sources.
    pub fn new(tokens: Vec<Secret>) -> Self {
        Self(Arc::new(RwLock::new(tokens)))
    }

    /// Replaces the tokens in force.
    pub fn replace(&self, tokens: Vec<Secret>) {
        if let Ok(mut t) = self.0.write() {
            *t = tokens;
        }
    }

    /// Whether `presented` is one of the tokens. Every token is compared, each in time that
    /// depends only on the lengths, so timing tells neither which token nor how much matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let Ok(tokens) = self.0.read() else {
            return false;
        };
        tokens
            .iter()
            .fold(false, |ok, t| ok | ct_eq(t.expose().as_bytes(), presented))
    }
}

/// Constant-time equality of two byte strings (the length is not hidden).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer …` header (scheme case-insensitive).
fn bearer(req: &Request) -> Option<&[u8]> {
    let value = req.headers().get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// The middleware in front of every route.
pub async fn require_token(State(api): State<ApiState>, req: Request, next: Next) -> Response {
    match bearer(&req) {
        Some(token) if api.tokens().accepts(token) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_listed_token_is_accepted_and_nothing_else() {
        let t = Tokens::new(vec![
            Secret::new("old-token-0123456789".into()),
            Secret::new("new-token-0123456789".into()),
        ]);
        assert!(t.accepts(b"old-token-0123456789"));
        assert!(t.accepts(b"new-token-0123456789"));
        assert!(!t.accepts(b"new-token-012345678"));
        assert!(!t.accepts(b"new-token-01234567890"));
        assert!(!t.accepts(b""));
        t.replace(vec![Secret::new("new-token-0123456789".into())]);
        assert!(!t.accepts(b"old-token-0123456789"), "rotated out");
    }
}
