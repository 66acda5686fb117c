//! MySQL/MariaDB: `synced_sessions.client_id` compares bytes (`utf8mb4_bin`), and `payload`
//! holds up to 16 MiB (`MEDIUMTEXT`).
//!
//! # Why
//!
//! * **`client_id`** was created with the database's default collation, which on MySQL and
//!   MariaDB ignores case: `PUT /v1/sessions/Laptop` then `PUT /v1/sessions/laptop` wrote
//!   one session, the second device overwriting the first. PostgreSQL and SQLite compare
//!   bytes, so there these were always two sessions. Rows that differ only by case cannot
//!   exist yet (the unique index `(user_id, client_id)` made them collide), so the index
//!   stays valid when it is rebuilt under the new collation.
//! * **`payload`** was `TEXT`, 65,535 bytes on MySQL: a larger session answered 500 ("Data too
//!   long"). `MEDIUMTEXT` holds 16,777,215 bytes, more than any body the API accepts. The API
//!   also checks the stored size against the column's real limit, so a mismatch answers 413.
//!
//! # What it locks (MariaDB 10.11, measured; README has the figures)
//!
//! * **The collation change** runs `ALGORITHM=INPLACE, LOCK=NONE`: INSTANT is refused (the
//!   unique index must be rebuilt), but the rebuild happens in place while reads and writes go
//!   on. Measured under a writer: 187 ms on 200,000 rows and 2.7 s on 1,000,000, no write
//!   slower than without the migration. Only the metadata lock at its start and end is
//!   exclusive, and waiting for it is bounded by `lock_wait_timeout` (lock-timed step).
//! * **`TEXT` → `MEDIUMTEXT`** can only copy the table: INSTANT, NOCOPY and INPLACE are all
//!   refused ("Cannot change column type"), and MariaDB 10.11 refuses `LOCK=NONE` with COPY.
//!   So it runs `ALGORITHM=COPY, LOCK=SHARED`: reads go on, **writes to `synced_sessions`
//!   wait for the whole copy**. Measured on rows of ~300 bytes under a writer: 2.8 s on
//!   200,000 rows and 12.7 s on 1,000,000, and writes waited that long. On a large
//!   table, run `up` in a quiet window (or apply this step with an online schema-change tool
//!   and let the probe skip it). It is a step of its own so that the online collation change
//!   never waits behind it.
//! * **The copy is [`Mode::TableCopy`], not retried.** Its last act is to take an exclusive
//!   metadata lock; any transaction that has the table open (a read left open is enough) holds
//!   that off past `lock_wait_timeout`, and the finished copy is thrown away. Retried like a
//!   metadata-only change, that was up to MIGRATION_LOCK_ATTEMPTS full copies and as many write
//!   stalls. So the step first waits until no transaction has the table open, checked with
//!   `LOCK TABLES ... WRITE NOWAIT` (answers at once, queues no one; this MariaDB has no
//!   `METADATA_LOCK_INFO` plugin, and `innodb_trx` does not say which tables a transaction
//!   holds), and then copies once; a final lock lost anyway is reported, not retried.
//! * Each step is re-runnable: its probe reads the column's type and collation from
//!   `information_schema.columns`, so a crash or a lock timeout half-way is finished by
//!   running `up` (or `down`) again. MySQL DDL is not transactional, hence no wrapping
//!   transaction.
//!
//! # `down`
//!
//! `down` restores m008's columns exactly: the table's default collation (written as no
//! collation at all, as m002 did) and `TEXT`. Both copy or rebuild the same way as `up`. A
//! step fails, with the database's error naming the value, while a payload is over 65,535
//! bytes (strict mode refuses to truncate) or two sessions of a user differ only by the case
//! of their `client_id` (the unique index would collide); once those rows are dealt with,
//! `down` again finishes the job.
//!
//! # PostgreSQL and SQLite: nothing to do
//!
//! Their `varchar`/`text` compare bytes and `text` is unbounded (1 GB on PostgreSQL, SQLite's
//! limit is a gigabyte too), so the migration has no steps there.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::operation::{Operation, Operations, StringColumn, TextWidening};

#[derive(DeriveMigrationName)]
pub struct Migration;

impl Operations for Migration {
    const REQUIRED_TABLES: &'static [&'static str] = &["synced_sessions"];
    /// The `TEXT` → `MEDIUMTEXT` copy (see above): writes to `synced_sessions` wait for it.
    const NOT_LIVE_SAFE: &'static [crate::step::NotLiveSafe] = &[crate::step::NotLiveSafe {
        backend: sea_orm_migration::sea_orm::DbBackend::MySql,
        why: "payload TEXT to MEDIUMTEXT copies synced_sessions (ALGORITHM=COPY, LOCK=SHARED): \
              session writes wait for the whole copy",
    }];

    /// `down` is derived: `payload` back to TEXT, then `client_id` to the table's collation.
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![
            Operation::CompareAsBytes(StringColumn {
                table: "synced_sessions",
                column: "client_id",
                sql_type: "varchar(100)",
                not_null: true,
            }),
            Operation::WidenText(TextWidening {
                table: "synced_sessions",
                column: "payload",
                narrow: "text",
                wide: "mediumtext",
                not_null: true,
            }),
        ]
    }
}

crate::planned_migration!(Migration, outside_a_transaction);
