//! Request headers shared by every call that queues work: `Prefer: wait=N` (RFC 7240) and
//! `Idempotency-Key`.

use std::time::Duration;

use axum::http::HeaderMap;

use super::ApiError;

/// Longest `Prefer: wait=N` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// `Prefer: wait=N`: how long to wait for the outcome before answering `202`. Other
/// preferences are ignored, as RFC 7240 asks; `wait` above 30 is a `400` rather than a silent
/// cut, so a client learns the bound.
pub fn prefer_wait(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    for value in headers.get_all("prefer") {
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request("Prefer", "not ASCII"))?;
        for pref in text.split([',', ';']) {
            let Some((name, n)) = pref.split_once('=') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("wait") {
                continue;
            }
            let n: u64 = n.trim().trim_matches('"').parse().map_err(|_| {
                ApiError::bad_request("Prefer", "wait must be a whole number of seconds")
            })?;
            if n > MAX_WAIT.as_secs() {
                return Err(ApiError::bad_request(
                    "Prefer",
                    format!("wait must be at most {}", MAX_WAIT.as_secs()),
                ));
            }
            return Ok(Some(Duration::from_secs(n)));
        }
    }
    Ok(None)
}

/// `Idempotency-Key`: a retried request with the same key returns the first request's result.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key", "must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::bad_request(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} characters"),
        ));
    }
    Ok(Some(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(name: &'static str, v: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_static(v));
        m
    }

    #[test]
    fn prefer_wait_is_read_bounded_and_other_preferences_ignored() {
        assert_eq!(prefer_wait(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            prefer_wait(&h("prefer", "wait=5")).unwrap(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            prefer_wait(&h("prefer", "respond-async, wait=30")).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(prefer_wait(&h("prefer", "return=minimal")).unwrap(), None);
        assert!(prefer_wait(&h("prefer", "wait=31")).is_err());
        assert!(prefer_wait(&h("prefer", "wait=soon")).is_err());
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            idempotency_key(&h("idempotency-key", " abc ")).unwrap(),
            Some("abc".into())
        );
        assert!(idempotency_key(&h("idempotency-key", "")).is_err());
    }
}
