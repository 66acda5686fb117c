//! What the API does, as functions over a connection (or a transaction); handlers stay thin.

pub mod accounts;
pub mod retention;
pub mod sessions;
pub mod stripe_backfill;
pub mod stripe_sync;
