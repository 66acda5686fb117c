//! MySQL and MariaDB: DDL is not transactional, and `ALTER TABLE` says how it may run.
//!
//! * Every `ALTER` names its algorithm (`ALGORITHM=INSTANT`, `INPLACE LOCK=NONE`), so one the
//!   server cannot honour fails loudly instead of falling back to a table copy that blocks
//!   writes. sea-query cannot write these clauses: they are appended as text.
//! * A CHECK is written inline in its column's `ADD COLUMN`, which MariaDB accepts with
//!   `ALGORITHM=INSTANT` (a CHECK of its own always copies the table). It is safe because the
//!   column is new: every row holds the default. MariaDB names it after the column.
//! * Strings compare case-insensitively by default: identifiers from other systems and CHECKs
//!   compare bytes.
//! * There are no partial indexes: a partial index is a plain one here.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use super::{Dialect, all_columns, check_probe, single_column};
use crate::operation::{AddColumns, IndexSpec, StringColumn, TextWidening, TieBreak, ValueCheck};
use crate::probe::{CatalogQueries, MySqlCollation, Probe};
use crate::step::{Mode, Step};

pub struct MySql;

/// The schema is the connection's database (`DATABASE()`).
const CATALOG: CatalogQueries = CatalogQueries {
    binds_schema: false,
    column: "SELECT 1 FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ?",
    index: INDEX,
    valid_index: INDEX,
    invalid_index: None,
    index_columns: "SELECT column_name FROM information_schema.statistics \
                    WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ? \
                    ORDER BY seq_in_index",
    column_type: Some(
        "SELECT CAST(c.column_type AS CHAR) AS column_type, \
         CAST(c.collation_name AS CHAR) AS collation, \
         CAST(t.table_collation AS CHAR) AS table_collation \
         FROM information_schema.columns c JOIN information_schema.tables t \
         ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = DATABASE() AND c.table_name = ? AND c.column_name = ?",
    ),
    constraint: CONSTRAINT,
    // MySQL and MariaDB validate a CHECK when they add it.
    validated_constraint: CONSTRAINT,
    view: "SELECT 1 FROM information_schema.views \
           WHERE table_schema = DATABASE() AND table_name = ?",
    table: "SELECT 1 FROM information_schema.tables \
            WHERE table_schema = DATABASE() AND table_name = ? AND table_type = 'BASE TABLE'",
};
const INDEX: &str = "SELECT 1 FROM information_schema.statistics \
                     WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ? LIMIT 1";
const CONSTRAINT: &str = "SELECT 1 FROM information_schema.table_constraints \
                          WHERE constraint_schema = DATABASE() AND table_name = ? \
                          AND constraint_name = ?";

impl MySql {
    /// `ALTER TABLE .. MODIFY COLUMN`, with `clauses` (ALGORITHM/LOCK) appended as text.
    fn modify_column(
        &self,
        table: &'static str,
        column: &'static str,
        sql_type: &str,
        not_null: bool,
        clauses: &str,
    ) -> String {
        let mut def = ColumnDef::new(Alias::new(column));
        def.custom(Alias::new(sql_type));
        if not_null {
            def.not_null();
        }
        format!(
            "{}, {clauses}",
            self.backend()
                .build(Table::alter().table(self.table(table)).modify_column(def))
        )
    }

    fn inline_check(check: &ValueCheck) -> Expr {
        Expr::col(Alias::new(check.column))
            .cast_as("BINARY")
            .is_in(check.values.iter().copied())
    }
}

impl Dialect for MySql {
    fn backend(&self) -> DbBackend {
        DbBackend::MySql
    }

    fn name(&self) -> &'static str {
        "mysql"
    }

    fn catalog(&self) -> &'static CatalogQueries {
        &CATALOG
    }

    /// A session variable (there is no per-transaction one), reset after the step.
    fn lock_timeout_sql(&self, timeout: std::time::Duration) -> Option<String> {
        Some(format!(
            "SET SESSION lock_wait_timeout = {}",
            self.lock_timeout_in_force(timeout).as_secs()
        ))
    }

    /// MySQL counts metadata-lock waits in whole seconds: rounded up (never less than
    /// asked), one second at least.
    fn lock_timeout_in_force(&self, asked: std::time::Duration) -> std::time::Duration {
        std::time::Duration::from_secs(asked.as_millis().div_ceil(1000).max(1) as u64)
    }

    fn lock_timeout_reset_sql(&self) -> Option<&'static str> {
        Some("SET SESSION lock_wait_timeout = DEFAULT")
    }

    /// InnoDB's own lock wait, which `lock_wait_timeout` does not bound. An `ALTER TABLE` of
    /// a table other tables reference (`users`) takes the metadata lock, then, to commit,
    /// InnoDB locks on the referencing tables (`synced_sessions`, `api_tokens`,
    /// `stripe_customers`), waiting up to `innodb_lock_wait_timeout` (50 s by default) while
    /// it holds the metadata lock that queues every statement on `users`. A webhook delivery
    /// holding a customer's row lock and about to lock its user waits on that metadata lock:
    /// a cycle no deadlock detector sees (one half is metadata locks, the other InnoDB's),
    /// which only a timeout breaks. Measured on MariaDB 10.11 with the API's lock order: every
    /// client stalled 2 s and failed (their own lock wait) at each m011 and m012 step on
    /// `users`. Bounded like the metadata lock, the step gives up and is retried with backoff.
    fn row_lock_timeout_sql(&self, timeout: std::time::Duration) -> Option<(String, &'static str)> {
        Some((
            format!(
                "SET SESSION innodb_lock_wait_timeout = {}",
                self.lock_timeout_in_force(timeout).as_secs()
            ),
            "SET SESSION innodb_lock_wait_timeout = DEFAULT",
        ))
    }

    fn add_columns(&self, op: &AddColumns) -> Vec<Step> {
        let mut alter = Table::alter();
        alter.table(self.table(op.table));
        for column in &op.columns {
            let mut def = column.def.clone();
            if let Some(check) = op.check.as_ref().filter(|c| c.column == column.name) {
                def.check(Self::inline_check(check));
            }
            alter.add_column(def);
        }
        let summary = match single_column(op) {
            Some(column) => format!("add {}.{column} (ALGORITHM=INSTANT)", op.table),
            None => format!(
                "add {} to {}{} (ALGORITHM=INSTANT)",
                op.label.unwrap_or("columns"),
                op.table,
                if op.check.is_some() {
                    ", CHECK inline"
                } else {
                    ""
                }
            ),
        };
        vec![
            Step::new(summary, Mode::LockTimed, all_columns(op, true)).raw(format!(
                "{}, ALGORITHM=INSTANT",
                self.backend().build(&alter)
            )),
        ]
    }

    fn repair_check(&self, op: &AddColumns) -> Vec<Step> {
        let Some(check) = &op.check else {
            return Vec::new();
        };
        vec![
            Step::new(
                format!(
                    "add {} where an interrupted older m006 left none (table copy)",
                    check.name
                ),
                Mode::LockTimed,
                // Either form counts: the named one of the older m006, or the inline one,
                // which MariaDB names after its column.
                Probe::Any(vec![
                    check_probe(op.table, check, true),
                    Probe::Constraint {
                        table: op.table,
                        name: check.column,
                        present: true,
                    },
                ]),
            )
            .raw(format!(
                "ALTER TABLE {} ADD CONSTRAINT `{}` CHECK (CAST(`{}` AS BINARY) IN ({})), \
                 ALGORITHM=COPY, LOCK=SHARED",
                self.qualified(op.table),
                check.name,
                check.column,
                check.value_list()
            )),
        ]
    }

    fn drop_columns(&self, op: &AddColumns) -> Vec<Step> {
        let mut alter = Table::alter();
        alter.table(self.table(op.table));
        for column in &op.columns {
            alter.drop_column(Alias::new(column.name));
        }
        let mut steps = Vec::new();
        if let Some(check) = &op.check {
            // The named CHECK of the older m006: MariaDB will not drop a column that a
            // table-level CHECK names. An inline CHECK goes with its column.
            steps.push(
                Step::new(
                    format!("drop {}", check.name),
                    Mode::LockTimed,
                    check_probe(op.table, check, false),
                )
                .raw(format!(
                    "ALTER TABLE {} DROP CONSTRAINT `{}`",
                    self.qualified(op.table),
                    check.name
                )),
            );
        }
        let summary = match single_column(op) {
            Some(column) => format!("drop {}.{column}", op.table),
            None => format!(
                "drop the {} (ALGORITHM=INSTANT)",
                op.label.unwrap_or("columns")
            ),
        };
        steps.push(
            Step::new(summary, Mode::LockTimed, all_columns(op, false)).raw(format!(
                "{}, ALGORITHM=INSTANT",
                self.backend().build(&alter)
            )),
        );
        steps
    }

    fn create_index(&self, index: &IndexSpec) -> Vec<Step> {
        vec![
            Step::new(
                format!("build {} {} (LOCK=NONE)", index.kind(false), index.name),
                Mode::LockTimed,
                Probe::index_present(index.table, index.name),
            )
            .raw(format!(
                "{} ALGORITHM=INPLACE LOCK=NONE",
                self.backend().build(&index.create(self))
            )),
        ]
    }

    fn drop_index(&self, index: &IndexSpec) -> Vec<Step> {
        vec![
            Step::new(
                format!("drop index {}", index.name),
                Mode::LockTimed,
                Probe::index_absent(index.table, index.name),
            )
            .build(
                self.backend(),
                Index::drop()
                    .name(index.name)
                    .table(self.table(index.table)),
            ),
        ]
    }

    /// An InnoDB secondary index carries the primary key after its own columns, so its ties are already ordered by the key: nothing to do either way.
    fn order_ties_by_key(&self, _index: &TieBreak, _by_key: bool) -> Vec<Step> {
        Vec::new()
    }

    /// sea-query writes a column's character set and collation only after NOT NULL, where
    /// MySQL refuses CHARACTER SET; as part of the type it is accepted. The collation change
    /// rebuilds the column's indexes in place: `ALGORITHM=INPLACE, LOCK=NONE` lets reads and
    /// writes go on.
    fn string_collation(&self, column: &StringColumn, binary: bool) -> Vec<Step> {
        let (summary, sql_type, collation) = if binary {
            (
                format!(
                    "{} COLLATE utf8mb4_bin (INPLACE, LOCK=NONE: rebuilds its index)",
                    column.column
                ),
                format!(
                    "{} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                    column.sql_type
                ),
                MySqlCollation::Named("utf8mb4_bin"),
            )
        } else {
            (
                format!(
                    "{} back to the table's collation (INPLACE, LOCK=NONE)",
                    column.column
                ),
                column.sql_type.to_owned(),
                MySqlCollation::TableDefault,
            )
        };
        vec![
            Step::new(
                summary,
                Mode::LockTimed,
                Probe::MySqlColumnType {
                    table: column.table,
                    column: column.column,
                    column_type: column.sql_type,
                    collation,
                },
            )
            .raw(self.modify_column(
                column.table,
                column.column,
                &sql_type,
                column.not_null,
                "ALGORITHM=INPLACE, LOCK=NONE",
            )),
        ]
    }

    /// A type change copies the table (INSTANT, NOCOPY and INPLACE are refused): `LOCK=SHARED`
    /// keeps reads going while writes wait, and [`Mode::TableCopy`] never retries a copy blindly.
    fn text_width(&self, text: &TextWidening, wide: bool) -> Vec<Step> {
        let to = if wide { text.wide } else { text.narrow };
        vec![
            Step::new(
                format!(
                    "{} {} (table copy, writes wait)",
                    text.column,
                    to.to_ascii_uppercase()
                ),
                Mode::TableCopy { table: text.table },
                Probe::MySqlColumnType {
                    table: text.table,
                    column: text.column,
                    column_type: to,
                    collation: MySqlCollation::TableDefault,
                },
            )
            .raw(self.modify_column(
                text.table,
                text.column,
                to,
                text.not_null,
                "ALGORITHM=COPY, LOCK=SHARED",
            )),
        ]
    }

    /// MySQL replaces a view in place.
    fn replace_view(&self, name: &'static str, create: &str) -> Step {
        Step::new(
            format!("replace view {name}"),
            Mode::LockTimed,
            Probe::Never,
        )
        .expecting(Probe::View {
            name,
            present: true,
        })
        .raw(create)
    }

    fn replacing_view_keyword(&self) -> &'static str {
        "CREATE OR REPLACE VIEW"
    }

    /// `utf8mb4_unicode_ci`: the collation the refusal of a non-`utf8mb4` database advises
    /// (charset.rs), named so that the table does not depend on the server's default either.
    fn text_table(&self, name: &'static str) -> TableCreateStatement {
        Table::create()
            .table(self.table(name))
            .character_set("utf8mb4")
            .collate(TEXT_COLLATION)
            .take()
    }

    fn case_sensitive_table(&self, name: &'static str) -> TableCreateStatement {
        Table::create()
            .table(self.table(name))
            .character_set("utf8mb4")
            .collate("utf8mb4_bin")
            .take()
    }

    fn later_than_now(&self, column: &str, days: u32) -> String {
        match days {
            0 => format!("{column} > CURRENT_TIMESTAMP"),
            days => format!("{column} + INTERVAL {days} DAY > CURRENT_TIMESTAMP"),
        }
    }

    fn case_sensitive_string(&self, name: &'static str, len: u32) -> ColumnDef {
        // The collation must follow the type directly, where sea-query would write NULL;
        // MySQL columns are nullable unless told otherwise.
        ColumnDef::new(Alias::new(name))
            .string_len(len)
            .extra("CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            .take()
    }
}

/// The collation of [`MySql::text_table`]'s tables.
pub const TEXT_COLLATION: &str = "utf8mb4_unicode_ci";
