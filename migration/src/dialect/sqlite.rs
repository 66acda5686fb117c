//! SQLite: one alteration per `ALTER TABLE`, constraints in the table's `CREATE` text.
//!
//! * Each column is added (and dropped) by a statement, and a step, of its own.
//! * A named CHECK rides inside its column's `ADD COLUMN`, and is validated there.
//! * A column that an index or view still uses cannot be dropped, which the reverse order of
//!   `down` respects.
//! * Timestamps are RFC 3339 text; `julianday()` compares them as instants.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use super::Dialect;
use crate::operation::{AddColumns, IndexSpec, TieBreak};
use crate::probe::{CatalogQueries, Probe};
use crate::step::{Mode, Step};

pub struct Sqlite;

/// The `main` schema.
const CATALOG: CatalogQueries = CatalogQueries {
    binds_schema: false,
    column: "SELECT 1 FROM pragma_table_info(?) WHERE name = ?",
    index: INDEX,
    valid_index: INDEX,
    invalid_index: None,
    index_columns: "SELECT p.name FROM sqlite_master m JOIN pragma_index_info(m.name) p \
                    WHERE m.type = 'index' AND m.tbl_name = ? AND m.name = ? ORDER BY p.seqno",
    column_type: None,
    constraint: CONSTRAINT,
    // SQLite keeps constraints in the table's CREATE text and validates on ADD COLUMN.
    validated_constraint: CONSTRAINT,
    view: "SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?",
    table: "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
};
const INDEX: &str =
    "SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND name = ?";
const CONSTRAINT: &str = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? \
                          AND instr(sql, ?) > 0";

impl Dialect for Sqlite {
    fn backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn catalog(&self) -> &'static CatalogQueries {
        &CATALOG
    }

    fn add_columns(&self, op: &AddColumns) -> Vec<Step> {
        op.columns
            .iter()
            .map(|column| {
                let mut def = column.def.clone();
                let mut summary = format!("add {}.{}", op.table, column.name);
                if let Some(check) = op.check.as_ref().filter(|c| c.column == column.name) {
                    def.check(Check::named(
                        check.name,
                        Expr::col(Alias::new(check.column)).is_in(check.values.iter().copied()),
                    ));
                    summary.push_str(&format!(" with {}", check.name));
                }
                Step::new(
                    summary,
                    Mode::LockTimed,
                    Probe::column_present(op.table, column.name),
                )
                .build(
                    self.backend(),
                    Table::alter().table(self.table(op.table)).add_column(def),
                )
            })
            .collect()
    }

    fn drop_columns(&self, op: &AddColumns) -> Vec<Step> {
        op.columns
            .iter()
            .rev()
            .map(|column| {
                let mut summary = format!("drop {}.{}", op.table, column.name);
                if op.check.as_ref().is_some_and(|c| c.column == column.name) {
                    summary.push_str(" and its CHECK");
                }
                Step::new(
                    summary,
                    Mode::LockTimed,
                    Probe::column_absent(op.table, column.name),
                )
                .build(
                    self.backend(),
                    Table::alter()
                        .table(self.table(op.table))
                        .drop_column(Alias::new(column.name)),
                )
            })
            .collect()
    }

    fn create_index(&self, index: &IndexSpec) -> Vec<Step> {
        let mut stmt = index.create(self);
        if let Some(column) = index.partial_not_null {
            stmt.and_where(Expr::col(Alias::new(column)).is_not_null());
        }
        vec![
            Step::new(
                format!("create {} {}", index.kind(true), index.name),
                Mode::LockTimed,
                Probe::index_present(index.table, index.name),
            )
            .build(self.backend(), &stmt),
        ]
    }

    fn drop_index(&self, index: &IndexSpec) -> Vec<Step> {
        vec![
            Step::new(
                format!("drop index {}", index.name),
                Mode::LockTimed,
                Probe::index_absent(index.table, index.name),
            )
            .build(self.backend(), Index::drop().name(index.name)),
        ]
    }

    fn create_view_keyword(&self) -> &'static str {
        "CREATE VIEW IF NOT EXISTS"
    }

    /// A SQLite index carries the rowid after its own columns (an INTEGER PRIMARY KEY is the rowid), so its ties are already ordered by the key: nothing to do either way.
    fn order_ties_by_key(&self, _index: &TieBreak, _by_key: bool) -> Vec<Step> {
        Vec::new()
    }

    fn later_than_now(&self, column: &str, days: u32) -> String {
        match days {
            0 => format!("julianday({column}) > julianday('now')"),
            days => format!("julianday({column}) + {days} > julianday('now')"),
        }
    }

    fn case_sensitive_string(&self, name: &'static str, len: u32) -> ColumnDef {
        ColumnDef::new(Alias::new(name))
            .string_len(len)
            .null()
            .take()
    }
}
