//! `fresh`: drop every table and view of the migrations' schema, then migrate from scratch.
//!
//! On PostgreSQL and SQLite, DDL is transactional, so every view and every table goes in one
//! transaction: interrupted, `fresh` leaves either the schema as it was or nothing, and never
//! a schema without its views that `status` calls fully applied (which it did when the views
//! were dropped, and committed, before SeaORM's own transaction that drops the tables). The
//! migrations then run as `up` runs them, each re-runnable: interrupted there, `up` finishes.
//!
//! MySQL/MariaDB commit every `DROP` at once, so nothing can make the drop atomic there. An
//! interrupted `fresh` leaves some objects dropped and others not; `migration status` reports
//! the missing ones as drift, and `fresh` again (or `repair`) finishes the job.

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait,
};

use crate::Migrator;
use crate::step::PauseHook;

/// Where the crash tests stop `fresh`: `MIGRATION_PAUSE_BEFORE=fresh:drop:N` pauses before the
/// N-th `DROP` (counting from 0, views first).
const PAUSE_NAME: &str = "fresh";

pub async fn run(db: &DatabaseConnection) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    if backend == DbBackend::MySql {
        tracing::info!(
            "MySQL/MariaDB commit each DROP at once: if this is interrupted, run `fresh` again"
        );
        drop_all(db).await?;
    } else {
        let transaction = db.begin().await?;
        if backend == DbBackend::Sqlite {
            // `PRAGMA foreign_keys = OFF` is a no-op inside a transaction; deferred, the
            // references are checked at commit, when every table is gone.
            transaction
                .execute_unprepared("PRAGMA defer_foreign_keys = ON")
                .await?;
        }
        drop_all(&transaction).await?;
        transaction.commit().await?;
    }
    // What is left to drop is SeaORM's (PostgreSQL types, which no migration here creates);
    // then every migration runs.
    Migrator::fresh(db).await
}

/// Names of the views, then the tables, of the migrations' schema.
async fn objects<C: ConnectionTrait>(db: &C, schema: &str) -> Result<Vec<(String, bool)>, DbErr> {
    let backend = db.get_database_backend();
    let list = match backend {
        DbBackend::Postgres => {
            "SELECT table_name AS name, table_type = 'VIEW' AS is_view \
             FROM information_schema.tables WHERE table_schema = $1 \
             AND table_type IN ('VIEW', 'BASE TABLE') ORDER BY 2 DESC, 1"
        }
        DbBackend::MySql => {
            "SELECT table_name AS name, table_type = 'VIEW' AS is_view \
             FROM information_schema.tables WHERE table_schema = DATABASE() \
             AND table_type IN ('VIEW', 'BASE TABLE') ORDER BY 2 DESC, 1"
        }
        _ => {
            "SELECT name, type = 'view' AS is_view FROM sqlite_master \
             WHERE type IN ('view', 'table') AND name NOT LIKE 'sqlite_%' ORDER BY 2 DESC, 1"
        }
    };
    let values = match backend {
        DbBackend::Postgres => vec![schema.to_owned().into()],
        _ => Vec::new(),
    };
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(backend, list, values))
        .await?;
    rows.iter()
        .map(|row| {
            let name = row.try_get::<String>("", "name")?;
            let is_view = row
                .try_get::<bool>("", "is_view")
                .or_else(|_| row.try_get::<i64>("", "is_view").map(|n| n != 0))?;
            Ok((name, is_view))
        })
        .collect()
}

/// Drops every view, then every table, of the migrations' schema (only that schema): with
/// CASCADE on PostgreSQL, as stock `fresh` drops tables, so a user's view built on ours does
/// not stop it; on MySQL, the foreign keys are not checked meanwhile.
async fn drop_all<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let schema = crate::schema::of(db).await?.unwrap_or_default();
    let objects = objects(db, &schema).await?;
    let engine = crate::step::configured()?;
    let pause = PauseHook::at(engine.pause_before.as_deref(), PAUSE_NAME, "drop");
    let cascade = if backend == DbBackend::Postgres {
        " CASCADE"
    } else {
        ""
    };
    if backend == DbBackend::MySql {
        db.execute_unprepared("SET SESSION foreign_key_checks = 0")
            .await?;
    }
    for (n, (name, is_view)) in objects.iter().enumerate() {
        let qualified =
            crate::schema::planning_in(&schema, || crate::schema::qualified(backend, name));
        let kind = if *is_view { "view" } else { "table" };
        pause.check(n);
        tracing::info!("Dropping {kind} '{name}'");
        let keyword = if *is_view { "VIEW" } else { "TABLE" };
        db.execute_unprepared(&format!("DROP {keyword} IF EXISTS {qualified}{cascade}"))
            .await?;
    }
    if backend == DbBackend::MySql {
        db.execute_unprepared("SET SESSION foreign_key_checks = 1")
            .await?;
    }
    Ok(())
}
