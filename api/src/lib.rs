//! The billing API: synced sessions with soft delete, restore and trash, the caller's billing
//! state, and Free-tier limits. `startup` builds it; `routes` are thin over `service`.

pub mod auth;
pub mod backoff;
pub mod body_deadline;
pub mod db;
pub mod db_fault;
pub mod domain;
pub mod error;
pub mod health_probe;
pub mod json;
pub mod metrics;
pub mod own_answers;
pub mod rate_buckets;
pub mod routes;
pub mod serve;
pub mod service;
pub mod settings;
pub mod startup;
pub mod startup_error;
pub mod state;
pub mod stripe;
pub mod token_gate;
pub mod user_queue;

pub use settings::{Limits, Settings};
pub use startup::Application;
pub use state::AppState;
