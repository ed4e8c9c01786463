//! What handlers take from a request, each refused in the API's error shape: JSON bodies of
//! at most [`MAX_BODY`] bytes (`413` beyond, `400` naming the field), numeric ids in the path,
//! and query strings.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
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

/// A numeric id from the path (`/v1/messages/{id}`): `400` naming `id` when it is not one.
#[derive(Debug, Clone, Copy)]
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::bad_request("id", "missing"))?;
        raw.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Id)
            .ok_or_else(|| ApiError::bad_request("id", "must be a positive whole number"))
    }
}

/// A query string of type `T`: `400` naming the parameter when it does not fit.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::bad_request("query", e.body_text()))
    }
}
