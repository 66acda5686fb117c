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
//! * **Build, drop, rename**, never drop-then-build: the purge always has an index to use.
//! * **`CONCURRENTLY`** for the build and the drop: no lock that stops writes while the index
//!   is read or removed. It cannot run in a transaction, hence `use_transaction() -> false`.
//!   An interrupted concurrent build leaves an INVALID index; the build step's probe only
//!   counts valid ones and drops any leftover before building again.
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
use sea_orm_migration::sea_orm::DbBackend;

use crate::idents::SyncedSessions;
use crate::probe::Probe;
use crate::step::{Direction, Mode, Planned, Step};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Frozen here rather than read from m006: each migration keeps the names it was written with.
const INDEX: &str = "idx_sessions_deleted_at";
const TABLE: &str = "synced_sessions";

/// One shape of the index: its columns, and the name it is built under before the swap.
struct Shape {
    columns: &'static [&'static str],
    building_as: &'static str,
    build: &'static str,
    drop_old: &'static str,
    rename: &'static str,
    drop_other_leftover: &'static str,
}

const BY_ID: Shape = Shape {
    columns: &["deleted_at", "id"],
    building_as: "idx_sessions_deleted_at_by_id",
    build: "build idx_sessions_deleted_at_by_id (deleted_at, id) concurrently",
    drop_old: "drop idx_sessions_deleted_at (deleted_at) concurrently",
    rename: "rename idx_sessions_deleted_at_by_id to idx_sessions_deleted_at",
    drop_other_leftover: "drop a half-built idx_sessions_deleted_at_alone left by `down`",
};

const ALONE: Shape = Shape {
    columns: &["deleted_at"],
    building_as: "idx_sessions_deleted_at_alone",
    build: "build idx_sessions_deleted_at_alone (deleted_at) concurrently",
    drop_old: "drop idx_sessions_deleted_at (deleted_at, id) concurrently",
    rename: "rename idx_sessions_deleted_at_alone to idx_sessions_deleted_at",
    drop_other_leftover: "drop a half-built idx_sessions_deleted_at_by_id left by `up`",
};

impl Planned for Migration {
    fn plan(&self, backend: DbBackend, direction: Direction) -> Vec<Step> {
        if backend != DbBackend::Postgres {
            return Vec::new();
        }
        match direction {
            Direction::Up => reshape(backend, &BY_ID, &ALONE),
            Direction::Down => reshape(backend, &ALONE, &BY_ID),
        }
    }
}

/// Steps that turn `idx_sessions_deleted_at` into `target`, whatever half-way state a previous
/// run in either direction left behind.
fn reshape(backend: DbBackend, target: &Shape, other: &Shape) -> Vec<Step> {
    let done = || Probe::IndexOn {
        table: TABLE,
        index: INDEX,
        columns: target.columns,
    };
    let mut build = Index::create()
        .name(target.building_as)
        .table(SyncedSessions::Table)
        .col(SyncedSessions::DeletedAt)
        .take();
    if target.columns.contains(&"id") {
        build.col(SyncedSessions::Id);
    }
    build
        .concurrently()
        .if_not_exists()
        .and_where(Expr::col(SyncedSessions::DeletedAt).is_not_null());
    let drop = |name: &str| {
        let mut statement = Index::drop();
        statement.name(name).if_exists().concurrently();
        statement
    };
    vec![
        Step::new(
            target.drop_other_leftover,
            Mode::Online,
            Probe::index_absent(TABLE, other.building_as),
        )
        .build(backend, &drop(other.building_as)),
        Step::new(
            target.build,
            Mode::Online,
            Probe::Any(vec![
                done(),
                Probe::IndexOn {
                    table: TABLE,
                    index: target.building_as,
                    columns: target.columns,
                },
            ]),
        )
        .build(backend, &drop(target.building_as))
        .build(backend, &build),
        Step::new(
            target.drop_old,
            Mode::Online,
            Probe::Any(vec![done(), Probe::index_absent(TABLE, INDEX)]),
        )
        .build(backend, &drop(INDEX)),
        Step::new(target.rename, Mode::LockTimed, done()).raw(format!(
            "ALTER INDEX \"{}\" RENAME TO \"{INDEX}\"",
            target.building_as
        )),
    ]
}

crate::register_plan!(Migration);

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::apply_planned(self, manager, Direction::Up).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::apply_planned(self, manager, Direction::Down).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}
