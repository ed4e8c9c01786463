//! Request bodies: JSON of at most [`MAX_BODY`] bytes, refused as `413` beyond and as a `400`
//! naming the field when they do not fit the type.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::ApiError;

/// Largest request body accepted (1 MiB).
pub const MAX_BODY: usize = 1 << 20;

/// A JSON body of type `T`, whatever the `Content-Type` says.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(format!("the body is larger than {MAX_BODY} bytes"))
            } else {
                ApiError::bad_request("body", "could not be read")
            }
        })?;
        parse(&bytes).map(Body)
    }
}

/// `bytes` as `T`; errors name the field (`addFlags[1]`) and what was wrong.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body" } else { &path };
        // serde_json's message, without its "at line 1 column 9" tail.
        let inner = e.inner().to_string();
        let message = inner.split(" at line ").next().unwrap_or(&inner);
        ApiError::bad_request(field, message)
    })
}
