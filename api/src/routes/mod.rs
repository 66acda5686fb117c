//! HTTP routes. Each module owns its router; handlers only parse, call a service, and shape
//! the response. Request and response types live here, never the entity models.

pub mod billing;
pub mod health;
pub mod openapi;
pub mod sessions;
pub mod webhooks;
