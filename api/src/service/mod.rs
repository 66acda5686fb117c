//! What the API does, as functions over a connection (or a transaction); handlers stay thin.

pub mod accounts;
pub mod retention;
pub mod sessions;
pub mod stripe_backfill;
pub mod stripe_sync;

use entity::users;
use sea_orm::{ConnectionTrait, DbBackend, QuerySelect, Select, sea_query::LockType};

/// `select` locking the user rows it reads until the transaction ends, so one user's writes
/// queue up. On PostgreSQL `FOR NO KEY UPDATE`: it excludes the same writers as `FOR UPDATE`
/// but not a foreign key's check (`FOR KEY SHARE`), so inserting a row that references the
/// user (a `stripe_customers` link, a migration's backfill) never waits for a request, nor a
/// request for it. MySQL has no such mode (`FOR UPDATE`); SQLite has no row locks.
pub(crate) fn lock_user_rows<C: ConnectionTrait>(
    db: &C,
    select: Select<users::Entity>,
) -> Select<users::Entity> {
    match db.get_database_backend() {
        DbBackend::Postgres => select.lock(LockType::NoKeyUpdate),
        _ => select.lock_exclusive(),
    }
}
