//! What can go wrong while migrating, by kind.
//!
//! Callers match on the kind (the API tells "pending migrations" from "cannot connect"); the
//! `migration` command prints the message, one line, at its edge. Every message is written to
//! be shown to a user as it is. Server text inside one is scrubbed of the URL's secrets before
//! it leaves [`crate::cli`]; the raw driver error stays available as the `source`.
//!
//! Errors found inside a migration (a step's lock not granted, a required table missing, the
//! migrator lock lost) have to cross SeaORM's runner, which only carries [`DbErr`]. [`raise`]
//! turns them into a `DbErr` and keeps the typed error aside; [`catching`] around the runner
//! gets it back.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm_migration::sea_orm::{DbErr, sqlx};

use crate::connect::{ConnectError, DatabaseUrl};
use crate::lock::LOCK_WAIT_ENV;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Connect(#[from] ConnectError),

    /// A setting from the environment that does not parse.
    #[error("{name} must be a whole number, got {given:?}")]
    Setting { name: &'static str, given: String },

    #[error(
        "another migrator has held the migration lock on {target} for over {}s; giving up \
         (raise {LOCK_WAIT_ENV} to wait longer)",
        waited.as_secs()
    )]
    LockWaitedOut { target: String, waited: Duration },

    /// The migrator lock's own connection could not be opened or set up.
    #[error("cannot {doing} the lock connection to {target}: {detail}")]
    LockConnection {
        doing: &'static str,
        target: String,
        detail: String,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "{target} leads to a transaction-mode pooler (one connection's server session changed \
         between transactions): the migration lock is a session's and would mean nothing there. \
         Give the migrator a direct connection to PostgreSQL in MIGRATION_DATABASE_URL (or -u)"
    )]
    TransactionPooler { target: String },

    #[error("taking the migration lock failed: {detail}")]
    LockFailed { detail: String },

    #[error(
        "lost the migration lock: its connection was closed (an idle timeout, a proxy or an \
         administrator), so another migrator may be running now. Stopped before the next step; \
         run the command again, and it finishes what is left"
    )]
    LostLock,

    /// A lock-timed step was refused its table lock on every attempt.
    #[error(
        "{position}: could not take the table lock for \"{step}\" after {attempts} attempts of \
         {timeout_ms} ms each; a long-running transaction is probably holding it. Find it with \
         `SELECT pid, state, xact_start, query FROM pg_stat_activity` (PostgreSQL) or `SHOW \
         PROCESSLIST` (MySQL), then run the migration again: finished steps are skipped. \
         MIGRATION_LOCK_TIMEOUT_MS and MIGRATION_LOCK_ATTEMPTS tune this."
    )]
    LockNotGranted {
        position: String,
        step: String,
        attempts: u32,
        timeout_ms: u128,
    },

    #[error(
        "{migration} needs table(s) {} which this database does not have; it builds on \
         the migrations before it, so run those first (or point DATABASE_URL at the right \
         database)",
        tables.join(", ")
    )]
    MissingTables {
        migration: String,
        tables: Vec<String>,
    },

    #[error(
        "the database records migration(s) {} as applied, but this build has no code for them; \
         it was migrated by a newer (or different) version of this project. Deploy that \
         version, or roll those migrations back with it, before running this one",
        versions.join(", ")
    )]
    UnknownApplied { versions: Vec<String> },

    #[error(
        "{} object(s) that applied migrations made are missing ({}): `migration repair` runs \
         their steps again",
        found.len(),
        found.join("; ")
    )]
    Drift { found: Vec<String> },

    #[error(
        "the database records migration(s) {} of a newer build, but this build's {} is not \
         applied: the history is not this build's followed by newer ones, so nothing is served \
         or migrated. Deploy the build that applied the newer migration(s)",
        newer.join(", "),
        pending.join(", ")
    )]
    PendingBelowNewer {
        pending: Vec<String>,
        newer: Vec<String>,
    },

    #[error(
        "migration(s) {} changed after they were applied: the plan this build would run differs \
         from the one recorded (`migration status` marks them). Restore the applied code and add \
         a new migration for the change; or, if the edit was deliberate and the database already \
         matches it, record the new plan with `migration accept-checksum NAME`",
        names.join(", ")
    )]
    ChecksumMismatch { names: Vec<String> },

    #[error("{name} is not applied: there is no checksum to accept (`migration up` records it)")]
    NotApplied { name: String },

    #[error("{name} is a plain MigrationTrait: it has no plan, so no checksum")]
    NoPlan { name: String },

    #[error("unknown backend {0:?}: use postgres, mysql or sqlite")]
    UnknownBackend(String),

    #[error("no migration named {name:?}; known: {}", known.join(", "))]
    UnknownMigration { name: String, known: Vec<String> },

    #[error(
        "cannot print the SQL of {}: a plain MigrationTrait runs code, not a step plan, so its \
         statements are known only when it runs (the other migrations' SQL is printed above). \
         Give it a plan to make it printable (docs/writing-a-migration.md)",
        names.join(", ")
    )]
    Unprintable { names: Vec<String> },

    /// Standard output could not be written (a full disk behind a redirect, say).
    #[error(
        "database {database} uses character set {charset}, which cannot store every character \
         users send (an emoji in a device name fails or becomes '?'), and MariaDB refuses \
         online schema changes on some of them; nothing was applied. Convert it first: \
         ALTER DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci, and \
         its tables, if it has any, as docs/migrator.md says; then run the migration again"
    )]
    NotUtf8mb4 { database: String, charset: String },

    /// A `utf8mb4` database whose older tables kept another character set.
    #[error(
        "database {database} is utf8mb4 but these columns are not, so an emoji sent to them \
         fails or becomes '?': {}; nothing was applied. Convert their tables to utf8mb4, \
         keeping each `_bin` column binary (ALTER TABLE ... CONVERT TO gives every column \
         the collation it names): docs/migrator.md has the statements; then run the \
         migration again",
        columns.join(", ")
    )]
    ColumnsNotUtf8mb4 {
        database: String,
        columns: Vec<String>,
    },

    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),

    /// Anything else the database said; `detail` is what to print.
    #[error("{detail}")]
    Database {
        detail: String,
        #[source]
        source: Box<DbErr>,
    },
}

impl Error {
    /// `err` as one readable message, keeping `err` as the source.
    pub fn database(err: DbErr) -> Self {
        let detail = match &err {
            DbErr::Migration(message) | DbErr::Custom(message) => message.clone(),
            DbErr::Exec(runtime) | DbErr::Query(runtime) => {
                format!(
                    "the database rejected a statement: {}",
                    server_text(runtime)
                )
            }
            other => other.to_string(),
        };
        Self::Database {
            detail,
            source: Box::new(err),
        }
    }

    /// The same error with server text scrubbed of `url`'s secrets (a server may quote what it
    /// was sent). The variants with a `detail` carry text this crate did not write; those made
    /// where the URL is at hand ([`ConnectError`], [`Error::LockConnection`]) are scrubbed
    /// already.
    ///
    /// A prepared statement the server says it does not know (SQLSTATE 26000) is reported as
    /// what causes it: a transaction-mode pooler that bound it on another server connection.
    /// [`crate::pooler`]'s probe can miss a busy pooler by luck (a local test run saw it
    /// once, with the pool's three server connections shared by parallel tests); the symptom
    /// cannot.
    pub fn scrubbed(self, url: &DatabaseUrl) -> Self {
        match self {
            Self::Database { source, .. }
                if url.backend == sea_orm_migration::sea_orm::DbBackend::Postgres
                    && unknown_prepared_statement(&source) =>
            {
                Self::TransactionPooler {
                    target: url.display.clone(),
                }
            }
            Self::Database { detail, source } => Self::Database {
                detail: url.scrub(&detail),
                source,
            },
            Self::LockFailed { detail } => Self::LockFailed {
                detail: url.scrub(&detail),
            },
            other => other,
        }
    }
}

/// Whether the server refused a statement naming a prepared statement it does not have.
fn unknown_prepared_statement(err: &DbErr) -> bool {
    use sea_orm_migration::sea_orm::RuntimeErr;
    let (DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err))) = err
    else {
        return false;
    };
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "26000")
}

/// What the server said, for a user. PostgreSQL's errors display with the line of the
/// server's own C source that raised them ("... at line 4464"), which means nothing to a
/// user: its message is shown, with its detail where it has one.
pub fn server_text(runtime: &sea_orm_migration::sea_orm::RuntimeErr) -> String {
    use sea_orm_migration::sea_orm::{RuntimeErr, sqlx::postgres::PgDatabaseError};
    let RuntimeErr::SqlxError(err) = runtime else {
        return runtime.to_string();
    };
    let Some(pg) = err
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<PgDatabaseError>())
    else {
        return runtime.to_string();
    };
    match pg.detail() {
        Some(detail) => format!("error returned from database: {} ({detail})", pg.message()),
        None => format!("error returned from database: {}", pg.message()),
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        Self::database(err)
    }
}

type Slot = Arc<Mutex<Option<Error>>>;

thread_local! {
    /// Where [`raise`] keeps the typed error, during a [`catching`] poll.
    static RAISED: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

/// `err` as the [`DbErr`] that SeaORM's runner carries, with the typed error kept for the
/// enclosing [`catching`] (if any) to return instead.
pub fn raise(err: Error) -> DbErr {
    let message = err.to_string();
    RAISED.with_borrow(|slot| {
        if let Some(slot) = slot {
            *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(err);
        }
    });
    DbErr::Migration(message)
}

/// Runs `work` (SeaORM's runner), turning its `DbErr` back into the typed error [`raise`]d
/// inside, when it is that one; any other `DbErr` becomes [`Error::Database`].
pub async fn catching<T, F>(work: F) -> Result<T, Error>
where
    F: Future<Output = Result<T, DbErr>>,
{
    struct Restore(Option<Slot>);
    impl Drop for Restore {
        fn drop(&mut self) {
            RAISED.set(self.0.take());
        }
    }
    let slot: Slot = Arc::new(Mutex::new(None));
    let mut work = pin!(work);
    let outcome = poll_fn(|cx| {
        let _restore = Restore(RAISED.replace(Some(Arc::clone(&slot))));
        work.as_mut().poll(cx)
    })
    .await;
    outcome.map_err(|err| {
        let raised = slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match (raised, &err) {
            // The raised error made it out unchanged: it is what stopped the run.
            (Some(typed), DbErr::Migration(message)) if typed.to_string() == *message => typed,
            _ => Error::database(err),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_error_comes_back_typed() {
        let got = async_io::block_on(catching(async {
            Err::<(), _>(raise(Error::MissingTables {
                migration: "m".to_owned(),
                tables: vec!["users".to_owned()],
            }))
        }));
        assert!(
            matches!(&got, Err(Error::MissingTables { tables, .. }) if tables == &["users"]),
            "{got:?}"
        );
    }

    #[test]
    fn another_error_after_a_raised_one_is_not_mistaken_for_it() {
        let got = async_io::block_on(catching(async {
            let _ = raise(Error::LostLock);
            Err::<(), _>(DbErr::Custom("something else".to_owned()))
        }));
        assert!(
            matches!(&got, Err(Error::Database { detail, .. }) if detail == "something else"),
            "{got:?}"
        );
    }

    #[test]
    fn outside_catching_raise_is_a_plain_message() {
        let err = raise(Error::LostLock);
        assert!(matches!(err, DbErr::Migration(m) if m.starts_with("lost the migration lock")));
    }
}
