//! `GET /openapi.json`, generated from the code: each handler's `#[utoipa::path]` (its
//! parameters and answers) and the request and response types (`ToSchema`, `IntoParams`). The
//! handlers are registered on the router and in the document by the same call
//! (`utoipa_axum::routes!`), so a route cannot be served undocumented. A test walks the
//! document against the running router, and CI runs schemathesis against it.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
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
        SessionLinks.modify(&mut document);
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
            "429",
            "`too_many_unknown_tokens`: this address sent more failed bearer tokens (missing, \
             malformed, unknown, revoked) than UNKNOWN_TOKENS_PER_PEER a minute (answered after \
             a second); `rate_limited`: this token started more requests than \
             TOKEN_REQUESTS_PER_SEC a second. Retry after Retry-After seconds",
        ),
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

/// Links between the session operations (OpenAPI `links`), so a client generator, and
/// schemathesis's stateful phase, can chain create → read → delete → the trash, and delete →
/// restore. schemathesis inferred links from PUT's 200 only, and a create answers 201: a
/// stateful run sent nothing but PUTs. Each link names its target by operationId (the
/// handler's name); tests/api/openapi.rs checks that every target exists.
///
/// No link leaves the trash's list or a restore: schemathesis (4.32) starts its chains from
/// any POST, or GET without a path parameter, that has a link of its own, and then never from
/// a PUT. With `GET /v1/trash → restore` declared, a stateful run sent no PUT at all, so no
/// session ever existed to chain from; the restore is reached from the DELETE instead.
struct SessionLinks;

/// From (path, method, status), a link (name, target operationId, where its `client_id`
/// comes from; none for the trash's list).
type LinkFrom = (&'static str, &'static str, &'static str);
type LinkTo = (&'static str, &'static str, Option<&'static str>);

const SESSION_LINKS: &[(LinkFrom, LinkTo)] = &[
    // The same PUT again is an update (200), which the links below start from too.
    (
        ("/v1/sessions/{client_id}", "put", "201"),
        ("UpdateSession", "sync", Some("$request.path.client_id")),
    ),
    (
        ("/v1/sessions/{client_id}", "put", "201"),
        ("GetSession", "get_one", Some("$request.path.client_id")),
    ),
    (
        ("/v1/sessions/{client_id}", "put", "201"),
        (
            "DeleteSession",
            "soft_delete",
            Some("$request.path.client_id"),
        ),
    ),
    (
        ("/v1/sessions/{client_id}", "put", "200"),
        ("GetSession", "get_one", Some("$request.path.client_id")),
    ),
    (
        ("/v1/sessions/{client_id}", "put", "200"),
        (
            "DeleteSession",
            "soft_delete",
            Some("$request.path.client_id"),
        ),
    ),
    (
        ("/v1/sessions/{client_id}", "get", "200"),
        (
            "DeleteSession",
            "soft_delete",
            Some("$response.body#/client_id"),
        ),
    ),
    (
        ("/v1/sessions/{client_id}", "delete", "204"),
        ("ListTrash", "trash", None),
    ),
    (
        ("/v1/sessions/{client_id}", "delete", "204"),
        ("RestoreSession", "restore", Some("$request.path.client_id")),
    ),
];

impl Modify for SessionLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for ((path, method, status), (name, target, client_id)) in SESSION_LINKS {
            let Some(operation) = openapi
                .paths
                .paths
                .get_mut(*path)
                .and_then(|item| operation_mut(item, method))
            else {
                continue;
            };
            let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status) else {
                continue;
            };
            let mut link = LinkBuilder::new().operation_id(*target);
            if let Some(expression) = client_id {
                link = link.parameter("client_id", *expression);
            }
            response
                .links
                .insert((*name).to_owned(), link.build().into());
        }
    }
}

fn operation_mut<'a>(item: &'a mut PathItem, method: &str) -> Option<&'a mut Operation> {
    match method {
        "get" => item.get.as_mut(),
        "put" => item.put.as_mut(),
        "post" => item.post.as_mut(),
        "delete" => item.delete.as_mut(),
        _ => None,
    }
}
