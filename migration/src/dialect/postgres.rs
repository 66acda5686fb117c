//! PostgreSQL: DDL is transactional and `ALTER TABLE` takes ACCESS EXCLUSIVE.
//!
//! * Column adds with a constant default are catalog updates (PostgreSQL 11+), so they are
//!   lock-timed steps; `IF NOT EXISTS` makes a raced add harmless.
//! * A CHECK is added `NOT VALID` with the columns (no scan under ACCESS EXCLUSIVE), then
//!   validated in a step of its own under SHARE UPDATE EXCLUSIVE, which lets reads and writes
//!   go on. sea-query cannot write `NOT VALID` or `VALIDATE CONSTRAINT`: raw SQL.
//! * Indexes are built and dropped `CONCURRENTLY` (no write lock), outside any transaction. An
//!   interrupted build leaves an INVALID index, dropped by the step before the build.
//! * Every name carries the schema chosen with `-s`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use super::{Dialect, all_columns, check_probe, single_column};
use crate::operation::{AddColumns, IndexSpec, TieBreak};
use crate::probe::{CatalogQueries, Probe};
use crate::step::{Mode, Step, drop_invalid_leftover};

pub struct Postgres;

/// Every query reads the migrations' schema (bound last), never `current_schema()`, which
/// follows `search_path`. An index counts as built only when valid.
const CATALOG: CatalogQueries = CatalogQueries {
    binds_schema: true,
    column: "SELECT 1 FROM information_schema.columns \
             WHERE table_name = $1 AND column_name = $2 AND table_schema = $3",
    index: "SELECT 1 FROM pg_index i \
            JOIN pg_class ic ON ic.oid = i.indexrelid \
            JOIN pg_class tc ON tc.oid = i.indrelid \
            JOIN pg_namespace n ON n.oid = ic.relnamespace \
            WHERE tc.relname = $1 AND ic.relname = $2 AND n.nspname = $3",
    valid_index: "SELECT 1 FROM pg_index i \
                  JOIN pg_class ic ON ic.oid = i.indexrelid \
                  JOIN pg_class tc ON tc.oid = i.indrelid \
                  JOIN pg_namespace n ON n.oid = ic.relnamespace \
                  WHERE tc.relname = $1 AND ic.relname = $2 AND n.nspname = $3 \
                  AND i.indisvalid",
    invalid_index: Some(
        "SELECT 1 FROM pg_index i \
         JOIN pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_class tc ON tc.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = ic.relnamespace \
         WHERE tc.relname = $1 AND ic.relname = $2 AND n.nspname = $3 \
         AND NOT i.indisvalid",
    ),
    index_columns: "SELECT a.attname::text FROM pg_index i \
                    JOIN pg_class ic ON ic.oid = i.indexrelid \
                    JOIN pg_class tc ON tc.oid = i.indrelid \
                    JOIN pg_namespace n ON n.oid = ic.relnamespace \
                    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) \
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                    WHERE tc.relname = $1 AND ic.relname = $2 AND n.nspname = $3 \
                    AND i.indisvalid ORDER BY k.position",
    column_type: None,
    constraint: "SELECT 1 FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
                 JOIN pg_namespace n ON n.oid = t.relnamespace \
                 WHERE t.relname = $1 AND c.conname = $2 AND n.nspname = $3",
    validated_constraint: "SELECT 1 FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
                           JOIN pg_namespace n ON n.oid = t.relnamespace \
                           WHERE t.relname = $1 AND c.conname = $2 AND n.nspname = $3 \
                           AND c.convalidated",
    view: "SELECT 1 FROM information_schema.views \
           WHERE table_name = $1 AND table_schema = $2",
    table: "SELECT 1 FROM information_schema.tables \
            WHERE table_name = $1 AND table_schema = $2 AND table_type = 'BASE TABLE'",
};

impl Dialect for Postgres {
    fn backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    fn name(&self) -> &'static str {
        "postgres"
    }

    fn catalog(&self) -> &'static CatalogQueries {
        &CATALOG
    }

    /// `SET LOCAL`: it ends with the step's own transaction.
    fn lock_timeout_sql(&self, timeout: std::time::Duration) -> Option<String> {
        Some(format!(
            "SET LOCAL lock_timeout = '{}ms'",
            timeout.as_millis()
        ))
    }

    fn add_columns(&self, op: &AddColumns) -> Vec<Step> {
        let mut alter = Table::alter();
        alter.table(self.table(op.table));
        for column in &op.columns {
            alter.add_column_if_not_exists(column.def.clone());
        }
        let (summary, done) = match (single_column(op), &op.check) {
            (Some(column), _) => (format!("add {}.{column}", op.table), all_columns(op, true)),
            (None, check) => (
                format!(
                    "add {} to {}{}",
                    op.label.unwrap_or("columns"),
                    op.table,
                    if check.is_some() {
                        ", CHECK NOT VALID"
                    } else {
                        ""
                    }
                ),
                match check {
                    Some(check) => Probe::All(vec![
                        all_columns(op, true),
                        check_probe(op.table, check, true),
                    ]),
                    None => all_columns(op, true),
                },
            ),
        };
        let mut add = Step::new(summary, Mode::LockTimed, done).build(self.backend(), &alter);
        let Some(check) = &op.check else {
            return vec![add];
        };
        add = add.raw(format!(
            "ALTER TABLE {} ADD CONSTRAINT \"{}\" CHECK (\"{}\" IN ({})) NOT VALID",
            self.qualified(op.table),
            check.name,
            check.column,
            check.value_list()
        ));
        let validate = Step::new(
            format!("validate {}", check.name),
            Mode::LockTimed,
            Probe::ConstraintValidated {
                table: op.table,
                name: check.name,
            },
        )
        .raw(format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT \"{}\"",
            self.qualified(op.table),
            check.name
        ));
        vec![add, validate]
    }

    fn drop_columns(&self, op: &AddColumns) -> Vec<Step> {
        let mut alter = Table::alter();
        alter.table(self.table(op.table));
        for column in &op.columns {
            alter.drop_column_if_exists(Alias::new(column.name));
        }
        let summary = match (single_column(op), &op.check) {
            (Some(column), _) => format!("drop {}.{column}", op.table),
            (None, Some(check)) => format!(
                "drop {} and the {}",
                check.name,
                op.label.unwrap_or("columns")
            ),
            (None, None) => format!("drop the {}", op.label.unwrap_or("columns")),
        };
        let mut step = Step::new(summary, Mode::LockTimed, all_columns(op, false));
        if let Some(check) = &op.check {
            // sea-query's ALTER TABLE cannot drop a constraint.
            step = step.raw(format!(
                "ALTER TABLE {} DROP CONSTRAINT IF EXISTS \"{}\"",
                self.qualified(op.table),
                check.name
            ));
        }
        vec![step.build(self.backend(), &alter)]
    }

    fn create_index(&self, index: &IndexSpec) -> Vec<Step> {
        let mut stmt = index.create(self);
        stmt.concurrently().if_not_exists();
        if let Some(column) = index.partial_not_null {
            stmt.and_where(Expr::col(Alias::new(column)).is_not_null());
        }
        vec![
            drop_invalid_leftover(
                self.backend(),
                format!(
                    "drop an INVALID {} left by an interrupted build",
                    index.name
                ),
                Alias::new(index.table),
                index.table,
                index.name,
            ),
            Step::new(
                format!("build {} {} concurrently", index.kind(true), index.name),
                Mode::Online,
                Probe::index_present(index.table, index.name),
            )
            .build(self.backend(), &stmt),
        ]
    }

    fn drop_index(&self, index: &IndexSpec) -> Vec<Step> {
        vec![
            Step::new(
                format!("drop index {} concurrently", index.name),
                Mode::Online,
                Probe::index_absent(index.table, index.name),
            )
            .build(
                self.backend(),
                Index::drop()
                    .name(index.name)
                    .table(self.table(index.table))
                    .if_exists()
                    .concurrently(),
            ),
        ]
    }

    /// Build under a temporary name, drop the old, rename: never drop-then-build, so the
    /// table always has the index. Each step's probe reads the index's columns, so a run
    /// interrupted anywhere, in either direction, finishes when run again; each direction first
    /// drops the other's half-built index. sea-query has no `ALTER INDEX ... RENAME`: raw SQL.
    fn order_ties_by_key(&self, index: &TieBreak, by_key: bool) -> Vec<Step> {
        let (target, building_as, other, other_name, other_direction) = if by_key {
            (
                index.with_key,
                index.with_key_as,
                index.columns,
                index.alone_as,
                "down",
            )
        } else {
            (
                index.columns,
                index.alone_as,
                index.with_key,
                index.with_key_as,
                "up",
            )
        };
        let table = index.table;
        let done = || Probe::IndexOn {
            table,
            index: index.index,
            columns: target,
        };
        let mut build = Index::create();
        build.name(building_as).table(self.table(table));
        for column in target {
            build.col(Alias::new(*column));
        }
        build.concurrently().if_not_exists();
        if let Some(column) = index.partial_not_null {
            build.and_where(Expr::col(Alias::new(column)).is_not_null());
        }
        let drop = |name: &str| {
            let mut statement = Index::drop();
            statement
                .name(name)
                .table(self.table(table))
                .if_exists()
                .concurrently();
            statement
        };
        vec![
            Step::new(
                format!("drop a half-built {other_name} left by `{other_direction}`"),
                Mode::Online,
                Probe::index_absent(table, other_name),
            )
            .build(self.backend(), &drop(other_name)),
            drop_invalid_leftover(
                self.backend(),
                format!("drop an INVALID {building_as} left by an interrupted build"),
                Alias::new(table),
                table,
                building_as,
            ),
            Step::new(
                format!("build {building_as} ({}) concurrently", target.join(", ")),
                Mode::Online,
                Probe::Any(vec![
                    done(),
                    Probe::IndexOn {
                        table,
                        index: building_as,
                        columns: target,
                    },
                ]),
            )
            .build(self.backend(), &build),
            Step::new(
                format!("drop {} ({}) concurrently", index.index, other.join(", ")),
                Mode::Online,
                Probe::Any(vec![done(), Probe::index_absent(table, index.index)]),
            )
            .build(self.backend(), &drop(index.index)),
            Step::new(
                format!("rename {building_as} to {}", index.index),
                Mode::LockTimed,
                done(),
            )
            .raw(format!(
                "ALTER INDEX {} RENAME TO \"{}\"",
                self.qualified(building_as),
                index.index
            )),
        ]
    }

    fn later_than_now(&self, column: &str, days: u32) -> String {
        match days {
            0 => format!("{column} > now()"),
            days => format!("{column} + interval '{days} days' > now()"),
        }
    }

    fn case_sensitive_string(&self, name: &'static str, len: u32) -> ColumnDef {
        ColumnDef::new(Alias::new(name))
            .string_len(len)
            .null()
            .take()
    }
}
