//! `GET /openapi.json`, generated from the code: each handler's `#[utoipa::path]` (its
//! parameters and answers) and the request and response types (`ToSchema`, `IntoParams`). The
//! handlers are registered on the router and in the document by the same call
//! (`utoipa_axum::routes!`), so a route cannot be served undocumented. A test walks the
//! document against the running router, and CI runs schemathesis against it.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ErrorBody;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "billing API",
        description = "Synced sessions with soft delete, and the account's billing state. Every \
            error, including a method a path does not accept (405, with an Allow header), has \
            the Error shape."
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The document's root: info, the `Error` schema, the bearer scheme. The operations come
/// from the routers merged onto it ([`crate::routes::api`]).
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The whole document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(|| {
        let mut document = crate::routes::api().into_openapi();
        // After the merge: the derive's `modifiers(...)` would run before any operation exists.
        BearerAndCommonErrors.modify(&mut document);
        document
    });
    &DOCUMENT
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI document", body = Object))
)]
async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}

/// The `bearer` scheme, and the answers any authenticated operation can give whatever it
/// does, added where an operation does not document them itself.
struct BearerAndCommonErrors;

impl Modify for BearerAndCommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // utoipa fills the license from Cargo.toml, which names none.
        openapi.info.license = None;
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.security.is_some() {
                    add_authenticated_errors(operation);
                }
            }
        }
    }
}

fn add_authenticated_errors(operation: &mut Operation) {
    let common = [
        ("401", "missing, malformed or revoked bearer token"),
        (
            "503",
            "the database is unavailable or busy (a lock wait past DB_LOCK_TIMEOUT_MS), or the \
             request ran past REQUEST_TIMEOUT_SECS; retry after Retry-After seconds",
        ),
        ("500", "unexpected error (logged; the body is opaque)"),
    ];
    for (status, description) in common {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Error")))
                            .build(),
                    )
                    .build()
                    .into()
            });
    }
}
