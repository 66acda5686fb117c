//! The schema's history, `m001` to `m008`, and the migrator that applies it.
//!
//! Every migration is a list of re-runnable [`step::Step`]s (see `step.rs`); the CLI in
//! `cli.rs` wraps SeaORM's runner with a database-wide lock, a dry run and readable errors.

use std::path::PathBuf;
use std::time::Duration;

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub mod cli;
pub mod connect;
pub mod dry_run;
pub mod idents;
pub mod lock;
pub mod probe;
pub mod settings;
pub mod step;

mod m001_create_users;
mod m002_create_synced_sessions;
mod m003_create_api_tokens;
mod m004_index_sessions_by_user;
mod m005_add_user_display_name;
pub mod m006_billing_fields;
mod m007_stripe_events;
mod m008_deleted_at_index_by_id;
pub mod m010_subscriptions;

use step::{Direction, Planned};

/// A migration that SeaORM can run and `migration sql` can print.
pub trait PlannedMigration: MigrationTrait + Planned {}
impl<T: MigrationTrait + Planned> PlannedMigration for T {}

pub struct Migrator;

impl Migrator {
    /// Every migration, oldest first. The single list both the runner and the dry run read.
    pub fn planned() -> Vec<Box<dyn PlannedMigration>> {
        vec![
            Box::new(m001_create_users::Migration),
            Box::new(m002_create_synced_sessions::Migration),
            Box::new(m003_create_api_tokens::Migration),
            Box::new(m004_index_sessions_by_user::Migration),
            Box::new(m005_add_user_display_name::Migration),
            Box::new(m006_billing_fields::Migration),
            Box::new(m007_stripe_events::Migration),
            Box::new(m008_deleted_at_index_by_id::Migration),
            Box::new(m010_subscriptions::Migration),
        ]
    }
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Self::planned()
            .into_iter()
            .map(|m| m as Box<dyn MigrationTrait>)
            .collect()
    }
}

/// Runs a planned migration's steps for the connection's backend.
pub(crate) async fn apply_planned<M>(
    migration: &M,
    manager: &SchemaManager<'_>,
    direction: Direction,
) -> Result<(), DbErr>
where
    M: Planned + MigrationName,
{
    let steps = migration.plan(manager.get_database_backend(), direction);
    step::apply(manager, migration.name(), direction, steps).await
}

/// `impl MigrationTrait` for a migration whose `up`/`down` are its plan, run in SeaORM's
/// default transaction mode.
#[macro_export]
macro_rules! planned_migration {
    ($ty:ty) => {
        #[sea_orm_migration::async_trait::async_trait]
        impl sea_orm_migration::MigrationTrait for $ty {
            async fn up(
                &self,
                manager: &sea_orm_migration::SchemaManager,
            ) -> Result<(), sea_orm_migration::DbErr> {
                $crate::apply_planned(self, manager, $crate::step::Direction::Up).await
            }

            async fn down(
                &self,
                manager: &sea_orm_migration::SchemaManager,
            ) -> Result<(), sea_orm_migration::DbErr> {
                $crate::apply_planned(self, manager, $crate::step::Direction::Down).await
            }
        }
    };
}

/// Fails with a message naming every table the migration needs but cannot find.
pub(crate) async fn require_tables(
    manager: &SchemaManager<'_>,
    migration: &str,
    tables: &[&str],
) -> Result<(), DbErr> {
    let mut missing = Vec::new();
    for table in tables {
        if !manager.has_table(table).await? {
            missing.push(*table);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(DbErr::Migration(format!(
        "{migration} needs table(s) {} which this database does not have; \
         it builds on m001-m005, so run the earlier migrations first \
         (or point DATABASE_URL at the right database)",
        missing.join(", ")
    )))
}

/// `created_at`-style column: timezone-aware, filled by the database.
pub(crate) fn created_at<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name)
        .timestamp_with_time_zone()
        .not_null()
        .default(Expr::current_timestamp())
        .take()
}

/// Sleeps on whichever runtime polls it: async-std in the CLI, tokio in the API.
pub async fn sleep(duration: Duration) {
    async_io::Timer::after(duration).await;
}

/// The embedded SQLite database a newcomer gets with no DATABASE_URL: `data/billing.sqlite`
/// at the workspace root, created on first use.
pub fn default_sqlite_path() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    workspace
        .parent()
        .map(|root| root.to_path_buf())
        .unwrap_or(workspace)
        .join("data")
        .join("billing.sqlite")
}

pub fn default_database_url() -> String {
    format!("sqlite://{}?mode=rwc", default_sqlite_path().display())
}

/// The backends this project runs on, as a user names them.
pub fn parse_backend(name: &str) -> Option<DbBackend> {
    match name.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" | "pg" => Some(DbBackend::Postgres),
        "mysql" | "mariadb" => Some(DbBackend::MySql),
        "sqlite" => Some(DbBackend::Sqlite),
        _ => None,
    }
}
