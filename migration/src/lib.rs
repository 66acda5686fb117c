//! The schema's history and the migrator that applies it.
//!
//! Most migrations are lists of re-runnable [`step::Step`]s (see `step.rs`), which the dry run
//! can print; a plain `MigrationTrait` (what `sea-orm-cli migrate generate` writes) runs too.
//! The CLI in `cli.rs` wraps SeaORM's runner with a database-wide lock (`lock.rs`), a dry run,
//! checksums of applied migrations (`checksum.rs`) and typed errors (`error.rs`) that it prints
//! as one line. `connect.rs` opens databases for the CLI and the API alike.
//!
//! Adding a migration: `sea-orm-cli migrate generate NAME` (from the workspace root) writes
//! `src/mYYYYMMDD_HHMMSS_NAME.rs` and adds its `mod` line and its line in `migrations()` at
//! the end of this file, which keeps the shape that command looks for. To make it printable
//! by `migration sql`, give it `impl step::Planned` and end the file with
//! `crate::planned_migration!(Migration);` (see any `m00N_*.rs`).
//!
//! On PostgreSQL everything lives in one schema, `public` unless `-s` says otherwise
//! (`schema.rs`); `step.rs` says how to write a step plan.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub mod charset;
pub mod checksum;
pub mod cli;
pub mod connect;
pub mod dialect;
pub mod drift;
pub mod dry_run;
pub mod error;
pub mod fresh;
pub mod idents;
pub mod lock;
pub mod operation;
pub mod pooler;
pub mod probe;
pub mod rollback;
pub mod schema;
pub mod settings;
pub mod step;

pub use error::Error;
use step::{Direction, Planned};

#[doc(hidden)]
pub use inventory;

/// A migration that SeaORM can run and `migration sql` can print.
pub trait PlannedMigration: MigrationTrait + Planned {}
impl<T: MigrationTrait + Planned> PlannedMigration for T {}

/// A planned migration's step plan, registered by [`register_plan!`] in its own file.
pub struct PlanEntry(pub &'static dyn PlannedMigration);
inventory::collect!(PlanEntry);

/// The step plan of the migration called `name`, if it has one (a plain `MigrationTrait` has
/// none: its `up` and `down` are code).
pub fn plan_of(name: &str) -> Option<&'static dyn PlannedMigration> {
    inventory::iter::<PlanEntry>
        .into_iter()
        .map(|entry| entry.0)
        .find(|migration| migration.name() == name)
}

impl Migrator {
    /// The planned migrations, in the order of [`MigratorTrait::migrations`].
    pub fn planned() -> Vec<&'static dyn PlannedMigration> {
        Self::migrations()
            .iter()
            .filter_map(|migration| plan_of(migration.name()))
            .collect()
    }
}

/// Runs a planned migration's steps for the connection's backend, then records (up) or
/// deletes (down) its checksum, in the migration's transaction where it has one.
pub(crate) async fn apply_planned<M>(
    migration: &M,
    manager: &SchemaManager<'_>,
    direction: Direction,
) -> Result<(), DbErr>
where
    M: PlannedMigration,
{
    require_tables(manager, migration.name(), migration.required_tables()).await?;
    let db = manager.get_connection();
    let backend = db.get_database_backend();
    let schema = schema::of(db).await?.unwrap_or_default();
    let steps = step::plan_in(migration, backend, &schema, direction);
    step::apply(manager, migration.name(), direction, steps).await?;
    match direction {
        Direction::Up => {
            let sum = checksum::of(migration, backend);
            checksum::record(db, migration.name(), &sum).await
        }
        Direction::Down => checksum::forget(db, migration.name()).await,
    }
}

/// Makes a planned migration's steps known to `migration sql` (what [`planned_migration!`]
/// does too; a migration that writes its own `impl MigrationTrait` calls this).
#[macro_export]
macro_rules! register_plan {
    ($migration:ident) => {
        $crate::inventory::submit! { $crate::PlanEntry(&$migration) }
    };
}

/// `impl MigrationTrait` for a migration whose `up`/`down` are its plan, registered for the
/// dry run. `planned_migration!(M)` runs the plan in SeaORM's default transaction mode (one
/// transaction on PostgreSQL and SQLite); `planned_migration!(M, outside_a_transaction)` lets
/// each step commit on its own, so no lock outlives its step, `CREATE INDEX CONCURRENTLY` can
/// run, and MySQL's self-committing DDL is never mistaken for atomic (every step is
/// re-runnable instead).
#[macro_export]
macro_rules! planned_migration {
    ($migration:ident) => {
        $crate::planned_migration!(@impl $migration {});
    };
    ($migration:ident, outside_a_transaction) => {
        $crate::planned_migration!(@impl $migration {
            fn use_transaction(&self) -> Option<bool> {
                Some(false)
            }
        });
    };
    (@impl $migration:ident { $($transaction_mode:tt)* }) => {
        $crate::register_plan!($migration);

        #[sea_orm_migration::async_trait::async_trait]
        impl sea_orm_migration::MigrationTrait for $migration {
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

            $($transaction_mode)*
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
    Err(error::raise(Error::MissingTables {
        migration: migration.to_owned(),
        tables: missing.iter().map(|t| (*t).to_owned()).collect(),
    }))
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
/// under the working directory, resolved when the binary runs (a path compiled in would be
/// the build machine's), created on first use. From the workspace root, as the README's
/// commands run, that is the workspace's `data/`. The caller prints the absolute path.
pub fn default_sqlite_path() -> PathBuf {
    let relative = Path::new("data").join("billing.sqlite");
    // No working directory (it was deleted): the relative path, which then fails to open
    // with the OS's own message.
    std::env::current_dir()
        .map(|dir| dir.join(&relative))
        .unwrap_or(relative)
}

/// [`default_sqlite_path`] as a URL. sqlx percent-decodes the path and stops it at `?` or `#`,
/// so those three are encoded: a working directory named `c%41d` or `q?x` must not open
/// `cAd/` or fail as a malformed URL the user never gave.
pub fn default_database_url() -> String {
    let path = default_sqlite_path().display().to_string();
    let mut encoded = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => encoded.push_str("%25"),
            '?' => encoded.push_str("%3F"),
            '#' => encoded.push_str("%23"),
            c => encoded.push(c),
        }
    }
    format!("sqlite://{encoded}?mode=rwc")
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

// m001-m008 predate sea-orm-cli's `mYYYYMMDD_HHMMSS_name` modules. `#[path]` keeps their files,
// and with them the names recorded in seaql_migrations (a migration's name is its file's);
// the module names take the shape `migrate generate` looks for, so that it keeps them.
#[path = "m001_create_users.rs"]
mod m00000000_000001_create_users;
#[path = "m002_create_synced_sessions.rs"]
mod m00000000_000002_create_synced_sessions;
#[path = "m003_create_api_tokens.rs"]
mod m00000000_000003_create_api_tokens;
#[path = "m004_index_sessions_by_user.rs"]
mod m00000000_000004_index_sessions_by_user;
#[path = "m005_add_user_display_name.rs"]
mod m00000000_000005_add_user_display_name;
#[path = "m006_billing_fields.rs"]
pub mod m00000000_000006_billing_fields;
#[path = "m007_stripe_events.rs"]
mod m00000000_000007_stripe_events;
#[path = "m008_deleted_at_index_by_id.rs"]
mod m00000000_000008_deleted_at_index_by_id;
#[path = "m009_session_client_id_binary.rs"]
mod m00000000_000009_session_client_id_binary;
#[path = "m010_subscriptions.rs"]
pub mod m00000000_000010_subscriptions;
#[path = "m011_past_due_since.rs"]
pub mod m00000000_000011_past_due_since;
#[path = "m012_price_grants_pro.rs"]
pub mod m00000000_000012_price_grants_pro;

pub use m00000000_000006_billing_fields as m006_billing_fields;
pub use m00000000_000010_subscriptions as m010_subscriptions;
pub use m00000000_000011_past_due_since as m011_past_due_since;
pub use m00000000_000012_price_grants_pro as m012_price_grants_pro;

pub struct Migrator;

// `sea-orm-cli migrate generate` rewrites everything from the `vec!` below to the last line
// ending in a bracket: nothing may follow it. One line per migration, oldest first.
#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m00000000_000001_create_users::Migration),
            Box::new(m00000000_000002_create_synced_sessions::Migration),
            Box::new(m00000000_000003_create_api_tokens::Migration),
            Box::new(m00000000_000004_index_sessions_by_user::Migration),
            Box::new(m00000000_000005_add_user_display_name::Migration),
            Box::new(m00000000_000006_billing_fields::Migration),
            Box::new(m00000000_000007_stripe_events::Migration),
            Box::new(m00000000_000008_deleted_at_index_by_id::Migration),
            Box::new(m00000000_000009_session_client_id_binary::Migration),
            Box::new(m00000000_000010_subscriptions::Migration),
            Box::new(m00000000_000011_past_due_since::Migration),
            Box::new(m00000000_000012_price_grants_pro::Migration),
        ]
    }
}
