//! The API over real HTTP, on every backend, each test with its own database and server.

#[path = "../support/mod.rs"]
mod support;

mod fake_stripe;
mod helpers;

mod auth;
mod limits;
mod openapi;
mod retention;
mod sessions;
mod stripe;
mod stripe_sync_command;
