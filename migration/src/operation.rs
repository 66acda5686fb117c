//! Schema changes as operations: what a migration declares instead of per-backend steps.
//!
//! An [`Operation`] is one schema change (add columns, create an index, create a view, ...).
//! It says *what* changes; the [`Dialect`] of each backend says *how*: the statements, the
//! [`Mode`](crate::step::Mode) that bounds their locks, and the [`Probe`](crate::probe::Probe)
//! that makes each step re-runnable. Every operation has an inverse, so a migration's `down`
//! is its operations' inverses in reverse order unless it states its own.
//!
//! # Writing a migration with operations
//!
//! ```ignore
//! impl Operations for Migration {
//!     const REQUIRED_TABLES: &'static [&'static str] = &["users"];
//!     fn up(&self, dialect: &dyn Dialect) -> Vec<Operation> {
//!         vec![Operation::CreateIndex(IndexSpec { .. })]
//!     }
//! }
//! crate::planned_migration!(Migration);
//! ```
//!
//! The dialect is passed in so that a column definition can ask for what differs per backend
//! (a case-sensitive collation, a time comparison in a view) without naming the backend.

use sea_orm_migration::prelude::*;

use crate::dialect::{self, Dialect};
use crate::step::{Direction, Planned, Step};

/// A column to add: its name (for probes and summaries) and its definition.
#[derive(Clone)]
pub struct NewColumn {
    pub name: &'static str,
    pub def: ColumnDef,
}

/// A CHECK that a column's value is one of `values`, compared byte for byte (MySQL's default
/// collations would otherwise admit `'ACTIVE'` for `'active'`).
#[derive(Clone)]
pub struct ValueCheck {
    /// Its name where the backend lets us name it.
    pub name: &'static str,
    pub column: &'static str,
    pub values: &'static [&'static str],
}

impl ValueCheck {
    /// `'a', 'b', ...`, as the raw SQL of a CHECK lists them.
    pub fn value_list(&self) -> String {
        self.values
            .iter()
            .map(|value| format!("'{value}'"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Columns added to one table in one operation, optionally with a CHECK on one of them.
#[derive(Clone)]
pub struct AddColumns {
    /// Tables and columns are named by their SQL names, which builders quote like any
    /// identifier and probes look up as they are.
    pub table: &'static str,
    /// What the columns are called together in summaries ("billing columns"); `None` for a
    /// single column, which is named as `table.column`.
    pub label: Option<&'static str>,
    pub columns: Vec<NewColumn>,
    pub check: Option<ValueCheck>,
}

/// An index, by name, on columns of one table; partial (`WHERE column IS NOT NULL`) where
/// the backend has partial indexes.
#[derive(Clone, Copy)]
pub struct IndexSpec {
    pub name: &'static str,
    pub table: &'static str,
    pub columns: &'static [&'static str],
    pub unique: bool,
    pub partial_not_null: Option<&'static str>,
}

impl IndexSpec {
    /// The `CREATE INDEX` statement, before a dialect adds what it needs.
    pub fn create(&self, dialect: &dyn Dialect) -> IndexCreateStatement {
        let mut stmt = Index::create();
        stmt.name(self.name).table(crate::schema::table(
            dialect.backend(),
            Alias::new(self.table),
        ));
        for column in self.columns {
            stmt.col(Alias::new(*column));
        }
        if self.unique {
            stmt.unique();
        }
        stmt
    }

    /// "unique index", "partial index" or "index", for summaries.
    pub fn kind(&self, partial: bool) -> &'static str {
        match (self.unique, partial && self.partial_not_null.is_some()) {
            (true, _) => "unique index",
            (false, true) => "partial index",
            (false, false) => "index",
        }
    }
}

/// A table created by a migration, with the indexes built on it while it is still empty.
#[derive(Clone, Copy)]
pub struct TableSpec {
    pub name: &'static str,
    /// Said after the name in the step's summary: "foreign key to users".
    pub note: Option<&'static str>,
    /// How the create and drop steps run: lock-timed where the table's foreign key locks a
    /// table that serves traffic (m010); plain for the tables m001-m007 created.
    pub mode: crate::step::Mode,
    /// `DROP TABLE IF EXISTS` (m010 on); m001-m007 drop without it, and their SQL stays as
    /// applied.
    pub drop_if_exists: bool,
    pub create: fn(&dyn Dialect) -> TableCreateStatement,
    pub indexes: &'static [NewTableIndex],
}

/// An index on a new table: no traffic reads or writes it yet, so it is built plainly.
#[derive(Clone, Copy)]
pub struct NewTableIndex {
    pub name: &'static str,
    /// What its step prints ("index stripe_customers by user").
    pub summary: &'static str,
    pub columns: &'static [&'static str],
    pub unique: bool,
}

/// A view replaced by another of the same name; each is its whole `CREATE` statement.
#[derive(Clone, Copy)]
pub struct ViewChange {
    pub name: &'static str,
    pub old: fn(&dyn Dialect) -> String,
    pub new: fn(&dyn Dialect) -> String,
}

/// An existing string column, by its SQL type (`varchar(100)`).
#[derive(Clone, Copy)]
pub struct StringColumn {
    pub table: &'static str,
    pub column: &'static str,
    pub sql_type: &'static str,
    pub not_null: bool,
}

/// An existing text column whose type caps its size on some backend (MySQL's `text`, 65,535
/// bytes) and a wider type of the same kind (`mediumtext`).
#[derive(Clone, Copy)]
pub struct TextWidening {
    pub table: &'static str,
    pub column: &'static str,
    pub narrow: &'static str,
    pub wide: &'static str,
    pub not_null: bool,
}

/// A column added plainly, in the migration's transaction, with the same statement on every
/// backend (m005).
#[derive(Clone)]
pub struct PlainColumn {
    pub table: &'static str,
    pub column: NewColumn,
}

/// An index whose ties should be ordered by the row's key: `columns`, then the key, where the
/// backend's index does not already end with it.
#[derive(Clone, Copy)]
pub struct TieBreak {
    pub index: &'static str,
    pub table: &'static str,
    pub columns: &'static [&'static str],
    /// `columns` followed by the key.
    pub with_key: &'static [&'static str],
    /// The names each shape is built under before it takes `index`'s name (where the backend
    /// builds a new index to reshape one).
    pub with_key_as: &'static str,
    pub alone_as: &'static str,
    pub partial_not_null: Option<&'static str>,
}

/// A view whose body (`SELECT ...`) is rendered for a dialect.
#[derive(Clone, Copy)]
pub struct ViewSpec {
    pub name: &'static str,
    pub body: fn(&dyn Dialect) -> String,
}

/// One schema change. Its steps come from the dialect; [`Operation::inverse`] undoes it.
#[derive(Clone)]
pub enum Operation {
    AddColumns(AddColumns),
    /// The inverse of [`Operation::AddColumns`]: drops its CHECK and its columns.
    DropColumns(AddColumns),
    CreateIndex(IndexSpec),
    DropIndex(IndexSpec),
    CreateView(ViewSpec),
    DropView(ViewSpec),
    CreateTable(TableSpec),
    DropTable(TableSpec),
    ReplaceView(ViewChange),
    PlainAddColumn(PlainColumn),
    PlainDropColumn(PlainColumn),
    /// Makes an existing string column compare as bytes, where the backend's default
    /// collation does not (MySQL). Nothing elsewhere.
    CompareAsBytes(StringColumn),
    /// The inverse of [`Operation::CompareAsBytes`]: the table's default collation again.
    CompareByTableDefault(StringColumn),
    /// Widens a text column where the backend caps it (MySQL). Nothing elsewhere.
    WidenText(TextWidening),
    /// The inverse of [`Operation::WidenText`].
    NarrowText(TextWidening),
    /// Reshapes an index from `columns` to `columns, key` under the same name, never leaving
    /// the table without it. Nothing where the backend's index already ends with the key.
    OrderTiesByKey(TieBreak),
    /// The inverse of [`Operation::OrderTiesByKey`].
    UnorderTies(TieBreak),
    /// Adds the CHECK of an [`AddColumns`] by a statement of its own, where its column exists
    /// but the CHECK does not: what an m006 from before the inline MariaDB CHECK left when
    /// interrupted between its two statements. Only MySQL has such databases; elsewhere it
    /// renders nothing. Its inverse is nothing: dropping the columns drops the CHECK.
    RepairCheck(AddColumns),
    /// Steps written by hand for what no operation says, with their own inverse.
    Custom {
        up: fn(&dyn Dialect) -> Vec<Step>,
        down: fn(&dyn Dialect) -> Vec<Step>,
    },
    Nothing,
}

impl Operation {
    /// The steps that carry out this operation on `dialect`'s backend, in order.
    pub fn steps(&self, dialect: &dyn Dialect) -> Vec<Step> {
        match self {
            Operation::AddColumns(op) => dialect.add_columns(op),
            Operation::DropColumns(op) => dialect.drop_columns(op),
            Operation::CreateIndex(index) => dialect.create_index(index),
            Operation::DropIndex(index) => dialect.drop_index(index),
            Operation::CreateView(view) => vec![dialect::create_view(dialect, view)],
            Operation::DropView(view) => vec![dialect::drop_view(dialect, view)],
            Operation::RepairCheck(op) => dialect.repair_check(op),
            Operation::CreateTable(spec) => dialect::create_table(dialect, spec),
            Operation::DropTable(spec) => vec![dialect::drop_table(dialect, spec)],
            Operation::ReplaceView(change) => {
                vec![dialect.replace_view(change.name, &(change.new)(dialect))]
            }
            Operation::PlainAddColumn(column) => vec![plain_add_column(dialect, column)],
            Operation::PlainDropColumn(column) => vec![plain_drop_column(dialect, column)],
            Operation::CompareAsBytes(column) => dialect.string_collation(column, true),
            Operation::CompareByTableDefault(column) => dialect.string_collation(column, false),
            Operation::WidenText(text) => dialect.text_width(text, true),
            Operation::NarrowText(text) => dialect.text_width(text, false),
            Operation::OrderTiesByKey(index) => dialect.order_ties_by_key(index, true),
            Operation::UnorderTies(index) => dialect.order_ties_by_key(index, false),
            Operation::Custom { up, .. } => up(dialect),
            Operation::Nothing => Vec::new(),
        }
    }

    /// The operation that undoes this one.
    pub fn inverse(&self) -> Operation {
        match self {
            Operation::AddColumns(op) => Operation::DropColumns(op.clone()),
            Operation::DropColumns(op) => Operation::AddColumns(op.clone()),
            Operation::CreateIndex(index) => Operation::DropIndex(*index),
            Operation::DropIndex(index) => Operation::CreateIndex(*index),
            Operation::CreateView(view) => Operation::DropView(*view),
            Operation::DropView(view) => Operation::CreateView(*view),
            Operation::CreateTable(spec) => Operation::DropTable(*spec),
            Operation::DropTable(spec) => Operation::CreateTable(*spec),
            Operation::ReplaceView(change) => Operation::ReplaceView(ViewChange {
                name: change.name,
                old: change.new,
                new: change.old,
            }),
            Operation::PlainAddColumn(column) => Operation::PlainDropColumn(column.clone()),
            Operation::PlainDropColumn(column) => Operation::PlainAddColumn(column.clone()),
            Operation::CompareAsBytes(column) => Operation::CompareByTableDefault(*column),
            Operation::CompareByTableDefault(column) => Operation::CompareAsBytes(*column),
            Operation::WidenText(text) => Operation::NarrowText(*text),
            Operation::NarrowText(text) => Operation::WidenText(*text),
            Operation::OrderTiesByKey(index) => Operation::UnorderTies(*index),
            Operation::UnorderTies(index) => Operation::OrderTiesByKey(*index),
            Operation::RepairCheck(_) | Operation::Nothing => Operation::Nothing,
            Operation::Custom { up, down } => Operation::Custom {
                up: *down,
                down: *up,
            },
        }
    }
}

fn plain_add_column(dialect: &dyn Dialect, column: &PlainColumn) -> Step {
    Step::new(
        format!("add {}.{}", column.table, column.column.name),
        crate::step::Mode::Plain,
        crate::probe::Probe::column_present(column.table, column.column.name),
    )
    .build(
        dialect.backend(),
        Table::alter()
            .table(dialect.table(column.table))
            .add_column(column.column.def.clone()),
    )
}

fn plain_drop_column(dialect: &dyn Dialect, column: &PlainColumn) -> Step {
    Step::new(
        format!("drop {}.{}", column.table, column.column.name),
        crate::step::Mode::Plain,
        crate::probe::Probe::column_absent(column.table, column.column.name),
    )
    .build(
        dialect.backend(),
        Table::alter()
            .table(dialect.table(column.table))
            .drop_column(Alias::new(column.column.name)),
    )
}

/// A migration written as operations.
pub trait Operations {
    /// Tables that must exist before it runs, in either direction; a missing one stops it with
    /// an error naming them all, before any step.
    const REQUIRED_TABLES: &'static [&'static str] = &[];

    /// Checksums of earlier plans of this migration that produce the same schema and data,
    /// kept when a plan is reshaped after databases applied it (see [`Planned::earlier_checksums`]).
    const EARLIER_CHECKSUMS: &'static [&'static str] = &[];

    /// Backends on which it cannot meet the live bar (see [`Planned::not_live_safe`]).
    const NOT_LIVE_SAFE: &'static [crate::step::NotLiveSafe] = &[];

    /// What `up` does.
    fn up(&self, dialect: &dyn Dialect) -> Vec<Operation>;

    /// What `down` does, when it is not the inverses of [`Operations::up`] in reverse order.
    fn down(&self, dialect: &dyn Dialect) -> Option<Vec<Operation>> {
        let _ = dialect;
        None
    }
}

/// `down` as declared, or derived from `up`.
pub fn down_of<M: Operations + ?Sized>(migration: &M, dialect: &dyn Dialect) -> Vec<Operation> {
    migration.down(dialect).unwrap_or_else(|| {
        migration
            .up(dialect)
            .iter()
            .rev()
            .map(Operation::inverse)
            .collect()
    })
}

impl<M: Operations> Planned for M {
    fn plan(
        &self,
        backend: sea_orm_migration::sea_orm::DbBackend,
        direction: Direction,
    ) -> Vec<Step> {
        let dialect = dialect::of(backend);
        let operations = match direction {
            Direction::Up => self.up(dialect),
            Direction::Down => down_of(self, dialect),
        };
        operations
            .iter()
            .flat_map(|operation| operation.steps(dialect))
            .collect()
    }

    fn required_tables(&self) -> &'static [&'static str] {
        M::REQUIRED_TABLES
    }

    fn earlier_checksums(&self) -> &'static [&'static str] {
        M::EARLIER_CHECKSUMS
    }

    fn not_live_safe(&self) -> &'static [crate::step::NotLiveSafe] {
        M::NOT_LIVE_SAFE
    }
}
