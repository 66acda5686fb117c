//! What a server of this build accepts at start (`--migrate on-start` and `check`): one rule
//! for both modes, so that a rollback to the previous release can serve.
//!
//! A rollback redeploys the previous release over a database that the newer one migrated.
//! That database records migrations the old build does not know, all newer than its last one,
//! and possibly checksums that the newer release accepted (`accept-checksum`) for migrations
//! the old build renders differently. Refusing either would turn a rollback into an outage,
//! and migrations are written to keep serving the previous release (docs/migrations.md). So:
//!
//! * recorded migrations newer than every migration of this build: served, with a warning;
//! * a recorded migration this build does not know, older than its last one: refused. The
//!   histories have forked (a migration of another branch), and this build's idea of the
//!   schema cannot be trusted;
//! * newer unknown migrations while a migration of this build is pending: refused. Applying
//!   it would put an older migration on top of newer ones;
//! * an applied migration whose checksum differs, with nothing pending: served, with a
//!   warning. Nothing runs, so no edited code runs; `migration up` (the step that would run
//!   something) still refuses it;
//! * anything pending: `check` refuses to serve, `on-start` runs `migration up`, which
//!   refuses a changed checksum as ever.
//!
//! The `migration` command itself keeps refusing every unknown migration: it would run code,
//! and an old migrator must not change a newer schema.

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};

use crate::Migrator;
use crate::checksum::{self, Check};
use crate::error::Error;

/// The history as a server of this build reads it at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Migrations of this build not applied yet, oldest first.
    pub pending: Vec<String>,
    /// Recorded migrations newer than every one of this build (the release rolled back from).
    pub newer: Vec<String>,
    /// Applied migrations whose plan differs from the checksum recorded.
    pub changed: Vec<String>,
}

impl History {
    /// Warnings a server logs when it serves this history anyway.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.newer.is_empty() {
            warnings.push(format!(
                "the database records migration(s) {} that this build does not know, all newer \
                 than its own: serving as the previous release during a rollback (the schema \
                 must still serve it; `migration up` of this build refuses to run here)",
                self.newer.join(", ")
            ));
        }
        if !self.changed.is_empty() {
            warnings.push(format!(
                "migration(s) {} differ from the checksum recorded when they were applied (a \
                 newer release accepted an edit, or this build's code was edited): serving, \
                 since nothing is pending; `migration up` refuses until it is resolved \
                 (`migration status`)",
                self.changed.join(", ")
            ));
        }
        warnings
    }
}

/// Every version in `seaql_migrations`, sorted; none where the table does not exist (reading
/// creates nothing).
pub async fn recorded_versions<C: ConnectionTrait>(db: &C) -> Result<Vec<String>, Error> {
    let exists = crate::probe::Probe::Table {
        table: "seaql_migrations",
        present: true,
    }
    .holds(db)
    .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT version FROM seaql_migrations ORDER BY version",
        ))
        .await?;
    let mut versions = rows
        .iter()
        .map(|row| row.try_get::<String>("", "version"))
        .collect::<Result<Vec<_>, _>>()?;
    // SeaORM orders by version as Rust compares strings; the server's collation may not.
    versions.sort();
    Ok(versions)
}

/// Reads the history without writing and applies the rule above: `Err` for what no mode may
/// serve, else what is pending and what to warn about.
pub async fn read<C: ConnectionTrait>(db: &C) -> Result<History, Error> {
    let known: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let recorded = recorded_versions(db).await?;
    let last_known = known.iter().max().cloned().unwrap_or_default();
    let (newer, between): (Vec<String>, Vec<String>) = recorded
        .iter()
        .filter(|version| !known.contains(version))
        .cloned()
        .partition(|version| *version > last_known);
    if !between.is_empty() {
        return Err(Error::UnknownApplied { versions: between });
    }
    let pending: Vec<String> = known
        .iter()
        .filter(|name| !recorded.contains(name))
        .cloned()
        .collect();
    if !newer.is_empty() && !pending.is_empty() {
        return Err(Error::PendingBelowNewer { pending, newer });
    }
    let applied: Vec<String> = known
        .iter()
        .filter(|name| recorded.contains(name))
        .cloned()
        .collect();
    let changed = checksum::check_applied(db, &applied)
        .await?
        .into_iter()
        .filter(|(_, check)| *check == Check::Changed)
        .map(|(name, _)| name)
        .collect();
    Ok(History {
        pending,
        newer,
        changed,
    })
}
