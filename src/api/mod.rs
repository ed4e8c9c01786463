//! The web app's HTTP API (#19): an authenticated listener of its own, through which the web
//! app acts on mail (flags, moves, deletes), reads what it asked for, searches and sends.
//!
//! The API never speaks IMAP or SMTP: a request is validated, stored durably as an action (or
//! a submission) in one transaction, and answered `202`; the task that holds the mailbox's
//! connection runs it and stores the outcome. `Prefer: wait=N` waits for that outcome.
//!
//! - [`auth`]: bearer tokens, compared in constant time; [`error`]: the one error shape;
//! - [`extract`]: bodies (1 MiB cap, `400` naming the field), path ids and query strings, each
//!   refused in the error shape; [`wait`]: `Prefer` and `Idempotency-Key`;
//! - [`search`]: the search box over the store (#21);
//! - [`openapi`]: the OpenAPI document, generated from the handlers' annotations.

pub mod actions;
pub mod auth;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod search;
pub mod wait;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::actions::Signals;
use crate::config::Account;
use crate::store::Store;

pub use auth::Tokens;
pub use error::ApiError;

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    /// The store: actions, messages, threads.
    store: Store,
    /// The account list in force, by id; replaced on reload.
    accounts: RwLock<Arc<HashMap<String, Arc<Account>>>>,
    /// The bearer tokens in force.
    tokens: Tokens,
    /// Cancelled when the daemon starts stopping: new work is refused with `503`.
    stopping: CancellationToken,
    /// Wakes the mailbox tasks; tells waiting requests of outcomes.
    signals: Signals,
    /// `api.action_timeout`.
    action_timeout: Duration,
}

impl ApiState {
    /// State over `store` with these accounts and tokens; `stopping` refuses new work.
    pub fn new(
        store: Store,
        accounts: &[Account],
        tokens: Tokens,
        stopping: CancellationToken,
        signals: Signals,
        action_timeout: Duration,
    ) -> Self {
        let state = Self {
            inner: Arc::new(Inner {
                store,
                accounts: RwLock::new(Arc::default()),
                tokens,
                stopping,
                signals,
                action_timeout,
            }),
        };
        state.set_accounts(accounts);
        state
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The account `id` of the list in force.
    pub fn account(&self, id: &str) -> Option<Arc<Account>> {
        self.inner.accounts.read().ok()?.get(id).cloned()
    }

    /// Replaces the account list (on reload).
    pub fn set_accounts(&self, accounts: &[Account]) {
        let map: HashMap<String, Arc<Account>> = accounts
            .iter()
            .map(|a| (a.id.clone(), Arc::new(a.clone())))
            .collect();
        if let Ok(mut a) = self.inner.accounts.write() {
            *a = Arc::new(map);
        }
    }

    /// The tokens in force (replace them on reload).
    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// Fails with `503` once the daemon is stopping.
    pub fn accepting(&self) -> Result<(), ApiError> {
        if self.inner.stopping.is_cancelled() {
            return Err(ApiError::unavailable());
        }
        Ok(())
    }

    /// Wake-ups and completions of actions.
    pub fn signals(&self) -> &Signals {
        &self.inner.signals
    }

    /// How long an action may wait for a task to run it.
    pub fn action_timeout(&self) -> Duration {
        self.inner.action_timeout
    }

    /// Cancelled when the daemon starts stopping.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stopping
    }
}

/// Every route, behind the token check and the body cap.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .route(
            "/v1/messages/{id}",
            patch(actions::patch_message).delete(actions::delete_message),
        )
        .route("/v1/messages/{id}/move", post(actions::move_message))
        .route(
            "/v1/threads/{id}",
            patch(actions::patch_thread).delete(actions::delete_thread),
        )
        .route("/v1/threads/{id}/move", post(actions::move_thread))
        .route("/v1/actions/{id}", get(actions::get_action))
        .route("/v1/accounts/{account}/search", get(search::search))
        .fallback(|| async { ApiError::not_found("such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn(count))
        .with_state(state)
}

/// Counts every answer by status, refusals of the token check included.
async fn count(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(crate::metrics::API_REQUESTS, "status" => status).increment(1);
    resp
}

/// Serves until `cancel`; requests in flight get a moment to finish.
pub async fn serve(listener: TcpListener, state: ApiState, cancel: CancellationToken) {
    let app = router(state);
    let served = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
    if let Err(e) = served.await {
        tracing::error!(error = %e, "API listener failed");
    }
}
