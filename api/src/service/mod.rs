//! What the API does, as functions over a connection (or a transaction); handlers stay thin.

pub mod accounts;
pub mod retention;
pub mod sessions;
pub mod stripe_backfill;
// SEAM: stand-ins for H3's write path; deleted at merge.
pub mod stripe_seam;
pub mod stripe_sync;
