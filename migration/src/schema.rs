//! The PostgreSQL schema the migrations live in, and how their statements name it.
//!
//! PostgreSQL resolves an unqualified name through `search_path`, whose default is
//! `"$user", public`: the moment a schema named after the role appears, unqualified DDL and
//! `current_schema()` move there, and a "drop the leftover index" meant for one schema hits
//! another. So nothing here relies on `search_path`: with no `-s`/`DATABASE_SCHEMA` the
//! schema is `public` (as stock sea-orm-cli), every statement names it, and every probe reads
//! it. [`crate::connect::open`] still pins `search_path` to that one schema, for SeaORM's own
//! `seaql_migrations` bookkeeping, which it names without a schema.
//!
//! MySQL's schema is the database in the URL and SQLite's is `main`; names stay unqualified
//! there.
//!
//! A migration does not pass the schema around: its `plan` is called inside [`planning_in`],
//! and it names tables through [`table`] (sea-query builders) or [`qualified`] (raw SQL).

use std::cell::RefCell;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// The schema used when none is chosen, as stock sea-orm-cli does.
pub const DEFAULT_SCHEMA: &str = "public";

thread_local! {
    static PLANNING_IN: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Calls `plan` (a migration's [`crate::step::Planned::plan`]) with `schema` as the schema that
/// [`table`] and [`qualified`] name. Outside such a call they name [`DEFAULT_SCHEMA`].
pub fn planning_in<R>(schema: &str, plan: impl FnOnce() -> R) -> R {
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            PLANNING_IN.with(|cell| *cell.borrow_mut() = previous);
        }
    }
    let previous = PLANNING_IN.with(|cell| cell.borrow_mut().replace(schema.to_owned()));
    let _restore = Restore(previous);
    plan()
}

/// The schema being planned for.
pub fn current() -> String {
    PLANNING_IN.with(|cell| {
        cell.borrow()
            .clone()
            .unwrap_or_else(|| DEFAULT_SCHEMA.to_owned())
    })
}

/// A table (or view) of ours, for sea-query builders: schema-qualified on PostgreSQL, bare on
/// MySQL and SQLite.
pub fn table<T: IntoIden>(backend: DbBackend, table: T) -> TableName {
    match backend {
        DbBackend::Postgres => TableName::from((Alias::new(current()), table)),
        _ => TableName::from(table),
    }
}

/// A table, view or index of ours, quoted for raw SQL: `"schema"."name"` on PostgreSQL,
/// `` `name` `` on MySQL, `"name"` on SQLite.
pub fn qualified(backend: DbBackend, name: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("{}.{}", quote_pg(&current()), quote_pg(name)),
        DbBackend::MySql => format!("`{}`", name.replace('`', "``")),
        _ => quote_pg(name),
    }
}

fn quote_pg(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The schema a connection opened by [`crate::connect::open`] works in: its `search_path`
/// when that names exactly one schema (what `open` sets), else [`DEFAULT_SCHEMA`].
/// `None` on MySQL and SQLite, which have one schema per connection.
pub async fn of<C: ConnectionTrait>(db: &C) -> Result<Option<String>, DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(None);
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_setting('search_path')",
        ))
        .await?;
    let search_path: String = match row {
        Some(row) => row.try_get_by_index(0)?,
        None => String::new(),
    };
    Ok(Some(
        single_schema(&search_path).unwrap_or_else(|| DEFAULT_SCHEMA.to_owned()),
    ))
}

/// `public` → `public`; `"My Schema"` → `My Schema`; a list or `"$user"` → `None`.
fn single_schema(search_path: &str) -> Option<String> {
    let entry = search_path.trim();
    if entry.is_empty() || entry.contains("$user") {
        return None;
    }
    if let Some(inner) = entry.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
        if inner.replace("\"\"", "").contains('"') {
            return None;
        }
        return Some(inner.replace("\"\"", "\""));
    }
    (!entry.contains(',')).then(|| entry.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_single_schema_from_search_path() {
        assert_eq!(single_schema("public").as_deref(), Some("public"));
        assert_eq!(single_schema("\"My \"\"S\"").as_deref(), Some("My \"S"));
        assert_eq!(single_schema("\"$user\", public"), None);
        assert_eq!(single_schema("a, b"), None);
        assert_eq!(single_schema("\"a\", \"b\""), None);
    }

    #[test]
    fn names_are_qualified_with_the_planned_schema() {
        assert_eq!(
            qualified(DbBackend::Postgres, "users"),
            "\"public\".\"users\""
        );
        planning_in("t\"1", || {
            assert_eq!(
                qualified(DbBackend::Postgres, "users"),
                "\"t\"\"1\".\"users\""
            );
            assert_eq!(qualified(DbBackend::MySql, "users"), "`users`");
        });
        assert_eq!(current(), DEFAULT_SCHEMA);
    }
}
