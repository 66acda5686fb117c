//! `idx_sessions_deleted_at` on `(deleted_at, id)` on PostgreSQL, so the retention purge reads
//! each batch straight off the index.
//!
//! # Why
//!
//! The purge walks soft-deleted sessions in `(deleted_at, id)` order behind a keyset cursor
//! and locks each batch `FOR UPDATE SKIP LOCKED`. On PostgreSQL the m006 index orders only by
//! `deleted_at`, so every batch had to read and sort *all* rows sharing the cursor's
//! timestamp. Ties are common: one `UPDATE ... SET deleted_at = now()` stamps every row it
//! touches with the same instant. And since the row locks sit between the sort and the
//! `LIMIT`, the sort is not a bounded top-N: with 500,000 tied rows each batch sorted them all
//! on disk. Measured (README): 4,815 rows/s and writers stalling up to 131 ms behind the
//! purge's I/O; with this index, 56,000 rows/s and writers within 11 ms of the noise floor.
//!
//! # Why each step is shaped as it is
//!
//! The migration is one operation, `OrderTiesByKey`; `dialect/postgres.rs` renders it as:
//!
//! * **Build, drop, rename**, never drop-then-build: the purge always has an index to use.
//! * **`CONCURRENTLY`** for the build and the drop: no lock that stops writes while the index
//!   is read or removed. It cannot run in a transaction, hence `use_transaction() -> false`.
//!   An interrupted concurrent build leaves an INVALID index; the build step's probe only
//!   counts valid ones, and a step before it drops the leftover, once its probe has checked
//!   that the index is invalid and on `synced_sessions` in our schema.
//! * **The rename** takes only SHARE UPDATE EXCLUSIVE on the index (PostgreSQL 12+), which no
//!   read or write conflicts with; it still runs lock-timed, like every catalog change here.
//!   sea-query has no `ALTER INDEX ... RENAME`, hence raw SQL.
//! * **Each step's probe reads the index's columns**, so `up` or `down` interrupted anywhere
//!   finishes when run again, and each direction first drops the other's half-built index.
//!
//! # squawk findings left on purpose
//!
//! CI lints both directions' PostgreSQL SQL with squawk, excluding:
//! * `require-lock-timeout` on the concurrent builds and drops: they take SHARE UPDATE
//!   EXCLUSIVE, which no read or write conflicts with, so waiting for it queues no traffic; a
//!   lock timeout would only abort a long build half-way and leave an INVALID index.
//! * `require-statement-timeout`: the concurrent build legitimately reads the whole table (as
//!   in m006).
//! * `renaming-object`: no query names an index; the rename restores the name the purge and
//!   `EXPLAIN` readers know, under the same lock-timed discipline as every catalog change.
//!
//! # Other backends: nothing to do
//!
//! An InnoDB secondary index carries the primary key after its own columns, and a SQLite index
//! carries the rowid (`id` is the rowid there), so `idx_sessions_deleted_at` already orders
//! ties by `id` on MySQL/MariaDB and SQLite. The migration has no steps there.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::operation::{Operation, Operations, TieBreak};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Frozen here rather than read from m006: each migration keeps the names it was written with.
const DELETED_AT_INDEX: TieBreak = TieBreak {
    index: "idx_sessions_deleted_at",
    table: "synced_sessions",
    columns: &["deleted_at"],
    with_key: &["deleted_at", "id"],
    with_key_as: "idx_sessions_deleted_at_by_id",
    alone_as: "idx_sessions_deleted_at_alone",
    partial_not_null: Some("deleted_at"),
};

impl Operations for Migration {
    const REQUIRED_TABLES: &'static [&'static str] = &["synced_sessions"];

    /// `down` is derived: the index back on `(deleted_at)` alone.
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![Operation::OrderTiesByKey(DELETED_AT_INDEX)]
    }
}

crate::planned_migration!(Migration, outside_a_transaction);
