//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and the
//! request and response types: `GET /v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::{actions, search};

/// The API's document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "idlesync API",
        description = "Act on mail through the engine that holds the mailbox's connection. \
                       Every call needs `Authorization: Bearer <token>`; errors are \
                       `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        actions::patch_message,
        actions::move_message,
        actions::delete_message,
        actions::patch_thread,
        actions::move_thread,
        actions::delete_thread,
        actions::get_action,
        search::search,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
