//! HTTP routes. Each module owns its router; handlers only parse, call a service, and shape
//! the response. Request and response types live here, never the entity models.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub mod billing;
pub mod health;
pub mod openapi;
pub mod sessions;
pub mod webhooks;

/// Every route, each registered with its `/openapi.json` entry.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(health::router())
        .merge(openapi::router())
        .merge(billing::router())
        .merge(sessions::router())
        .merge(webhooks::router())
}
