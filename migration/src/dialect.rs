//! What differs per backend, in one place per backend.
//!
//! An [`Operation`](crate::operation::Operation) says what changes; a dialect turns it into
//! [`Step`]s for its backend: the statements, the lock discipline ([`Mode`](crate::step::Mode))
//! and the probes. `dialect/postgres.rs`, `dialect/mysql.rs` and `dialect/sqlite.rs` each
//! hold everything their backend does differently, so a new operation is written once per
//! backend, side by side with that backend's other quirks, never as `match` arms spread over
//! the crate.

mod mysql;
mod postgres;
mod sqlite;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::operation::{
    AddColumns, IndexSpec, StringColumn, TableSpec, TextWidening, TieBreak, ValueCheck, ViewSpec,
};
use crate::probe::{CatalogQueries, Probe};
use crate::step::{Mode, Step};

pub trait Dialect: Sync {
    fn backend(&self) -> DbBackend;
    /// How users name the backend (`--backend`), as the dry run prints it.
    fn name(&self) -> &'static str;

    /// The catalog queries its probes ask.
    fn catalog(&self) -> &'static CatalogQueries;

    /// The statement that bounds lock waits for the rest of the current transaction; `None`
    /// where there is none (SQLite has one writer at a time and waits through its busy
    /// timeout).
    fn lock_timeout_sql(&self, timeout: std::time::Duration) -> Option<String> {
        let _ = timeout;
        None
    }
    /// The lock timeout the server applies when `asked` for.
    fn lock_timeout_in_force(&self, asked: std::time::Duration) -> std::time::Duration {
        asked
    }
    /// Undoes [`Dialect::lock_timeout_sql`] where it outlives the transaction.
    fn lock_timeout_reset_sql(&self) -> Option<&'static str> {
        None
    }
    /// A second bound a lock-timed step needs where the first does not cover every lock its
    /// DDL can wait for, with the statement that undoes it. Set by the migrator beside
    /// [`Dialect::lock_timeout_sql`] but, unlike it, not part of the plan: `migration sql`
    /// prints it as a comment and checksums leave it out, so adding it flagged no database.
    fn row_lock_timeout_sql(&self, timeout: std::time::Duration) -> Option<(String, &'static str)> {
        let _ = timeout;
        None
    }

    /// The steps that add `op`'s columns (and its CHECK).
    fn add_columns(&self, op: &AddColumns) -> Vec<Step>;
    /// The steps that drop what [`Dialect::add_columns`] added.
    fn drop_columns(&self, op: &AddColumns) -> Vec<Step>;
    /// Adds `op`'s CHECK by a statement of its own where its column exists without it (see
    /// [`crate::operation::Operation::RepairCheck`]). Nothing, unless the backend has
    /// databases that need it.
    fn repair_check(&self, op: &AddColumns) -> Vec<Step> {
        let _ = op;
        Vec::new()
    }
    fn create_index(&self, index: &IndexSpec) -> Vec<Step>;
    fn drop_index(&self, index: &IndexSpec) -> Vec<Step>;
    /// The steps that make `column` compare as bytes (`binary`) or by the table's default
    /// collation.
    fn string_collation(&self, column: &StringColumn, binary: bool) -> Vec<Step> {
        // PostgreSQL and SQLite compare strings as bytes by default: nothing to do.
        let _ = (column, binary);
        Vec::new()
    }
    /// The steps that give `text` its wide (`wide`) or narrow type.
    fn text_width(&self, text: &TextWidening, wide: bool) -> Vec<Step> {
        // PostgreSQL's and SQLite's text has no size cap: nothing to do.
        let _ = (text, wide);
        Vec::new()
    }
    /// The steps that give `index` the trailing `key` (`by_key`) or take it away.
    fn order_ties_by_key(&self, index: &TieBreak, by_key: bool) -> Vec<Step>;

    /// `CREATE OR REPLACE VIEW` or what the backend has instead.
    fn create_view_keyword(&self) -> &'static str {
        "CREATE OR REPLACE VIEW"
    }
    /// Replaces view `name` with `create` (a whole `CREATE ... VIEW` statement) in one
    /// lock-timed transaction: by default dropped and created, which transactional DDL makes
    /// atomic (readers never see the view missing).
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
        .raw(format!("DROP VIEW IF EXISTS {}", self.qualified(name)))
        .raw(create)
    }
    /// The keyword that creates a view in place of the one [`Dialect::replace_view`] drops.
    fn replacing_view_keyword(&self) -> &'static str {
        "CREATE VIEW"
    }

    /// A new table of text users send (emails, device names, payloads). MySQL/MariaDB name
    /// its character set, `utf8mb4`, rather than take the database's default: a table created
    /// in a `utf8mb3` or `latin1` database (or one converted after it) would otherwise fail
    /// or mangle an emoji. Elsewhere text is UTF-8 anyway.
    fn text_table(&self, name: &'static str) -> TableCreateStatement {
        Table::create().table(self.table(name)).take()
    }

    /// A new table whose text columns compare as bytes, as identifiers from other systems
    /// need.
    fn case_sensitive_table(&self, name: &'static str) -> TableCreateStatement {
        Table::create().table(self.table(name)).take()
    }

    /// SQL that holds while the timestamp `column` plus `days` days is still in the future.
    fn later_than_now(&self, column: &str, days: u32) -> String;

    /// A column for an identifier from another system (Stripe's ids), compared as bytes:
    /// `string_len(len)`, nullable.
    fn case_sensitive_string(&self, name: &'static str, len: u32) -> ColumnDef;

    /// A table or view of ours in raw SQL (schema-qualified on PostgreSQL).
    fn qualified(&self, name: &str) -> String {
        crate::schema::qualified(self.backend(), name)
    }

    /// A table of ours for sea-query builders.
    fn table(&self, name: &'static str) -> TableName {
        crate::schema::table(self.backend(), Alias::new(name))
    }
}

/// The dialect of `backend`.
pub fn of(backend: DbBackend) -> &'static dyn Dialect {
    match backend {
        DbBackend::Postgres => &postgres::Postgres,
        DbBackend::MySql => &mysql::MySql,
        _ => &sqlite::Sqlite,
    }
}

/// `CREATE VIEW`, replacing one of the same name where the backend can.
pub fn create_view(dialect: &dyn Dialect, view: &ViewSpec) -> Step {
    Step::new(view_summary("create", view), Mode::LockTimed, Probe::Never)
        .expecting(Probe::View {
            name: view.name,
            present: true,
        })
        .raw(format!(
            "{} {} AS {}",
            dialect.create_view_keyword(),
            crate::schema::qualified(dialect.backend(), view.name),
            (view.body)(dialect)
        ))
}
/// `CREATE TABLE`, then its indexes, each a step.
pub fn create_table(dialect: &dyn Dialect, spec: &TableSpec) -> Vec<Step> {
    let (summary, mode) = table_summary("create", spec);
    let mut steps = vec![
        Step::new(
            summary,
            mode,
            Probe::Table {
                table: spec.name,
                present: true,
            },
        )
        .build(dialect.backend(), &(spec.create)(dialect)),
    ];
    for index in spec.indexes {
        let mut stmt = Index::create();
        stmt.name(index.name).table(dialect.table(spec.name));
        for column in index.columns {
            stmt.col(Alias::new(*column));
        }
        if index.unique {
            stmt.unique();
        }
        steps.push(
            Step::new(
                index.summary,
                Mode::Plain,
                Probe::index_present(spec.name, index.name),
            )
            .build(dialect.backend(), &stmt),
        );
    }
    steps
}

/// `DROP TABLE IF EXISTS`, which takes its indexes with it.
pub fn drop_table(dialect: &dyn Dialect, spec: &TableSpec) -> Step {
    let (summary, mode) = table_summary("drop", spec);
    Step::new(
        summary,
        mode,
        Probe::Table {
            table: spec.name,
            present: false,
        },
    )
    .build(dialect.backend(), &{
        let mut drop = Table::drop();
        drop.table(dialect.table(spec.name));
        if spec.drop_if_exists {
            drop.if_exists();
        }
        drop
    })
}

fn table_summary(verb: &str, spec: &TableSpec) -> (String, Mode) {
    let summary = match spec.note {
        Some(note) => format!("{verb} table {} ({note})", spec.name),
        None => format!("{verb} table {}", spec.name),
    };
    (summary, spec.mode)
}

/// `DROP VIEW IF EXISTS`.
pub fn drop_view(dialect: &dyn Dialect, view: &ViewSpec) -> Step {
    Step::new(
        view_summary("drop", view),
        Mode::LockTimed,
        Probe::View {
            name: view.name,
            present: false,
        },
    )
    .raw(format!(
        "DROP VIEW IF EXISTS {}",
        crate::schema::qualified(dialect.backend(), view.name)
    ))
}

fn view_summary(verb: &str, view: &ViewSpec) -> String {
    format!("{verb} view {}", view.name)
}

/// `users.stripe_customer_id`-style name of an operation's single column, or its label.
pub(crate) fn single_column(op: &AddColumns) -> Option<&'static str> {
    match op.columns.as_slice() {
        [only] if op.label.is_none() => Some(only.name),
        _ => None,
    }
}

/// Every column of `op` present (or every one gone).
pub(crate) fn all_columns(op: &AddColumns, present: bool) -> Probe {
    let probes: Vec<Probe> = op
        .columns
        .iter()
        .map(|column| Probe::Column {
            table: op.table,
            column: column.name,
            present,
        })
        .collect();
    match <[Probe; 1]>::try_from(probes) {
        Ok([only]) => only,
        Err(probes) => Probe::All(probes),
    }
}

pub(crate) fn check_probe(table: &'static str, check: &ValueCheck, present: bool) -> Probe {
    Probe::Constraint {
        table,
        name: check.name,
        present,
    }
}
