//! One migrator at a time per database.
//!
//! * PostgreSQL: a session-level advisory lock (advisory locks are per database already).
//! * MySQL/MariaDB: `GET_LOCK` on a name that includes the database (those are server-wide).
//! * SQLite: an exclusive OS lock on `<database file>.migrate-lock`.
//!
//! The lock lives on a dedicated connection outside any pool, so no pool recycling can drop it,
//! and the server releases it if the process dies. We poll a *try*-lock instead of blocking in
//! `pg_advisory_lock`: a session blocked there holds a snapshot, and a concurrent
//! `CREATE INDEX CONCURRENTLY` in the lock holder would wait for that snapshot forever.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::sea_orm::sqlx::{self, Connection};

use crate::connect::{DatabaseUrl, Failure};
use crate::settings::random_fraction;

pub const LOCK_WAIT_ENV: &str = "MIGRATION_LOCK_WAIT_SECS";
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(250);

const PG_TRY_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtext('billing-migrator'), hashtext(current_database()))";
const PG_UNLOCK: &str =
    "SELECT pg_advisory_unlock(hashtext('billing-migrator'), hashtext(current_database()))";
const MYSQL_TRY_LOCK: &str =
    "SELECT GET_LOCK(LEFT(CONCAT('billing-migrator:', DATABASE()), 64), 0)";
const MYSQL_UNLOCK: &str = "SELECT RELEASE_LOCK(LEFT(CONCAT('billing-migrator:', DATABASE()), 64))";

/// A held migration lock; released on [`MigrationLock::release`] or when the process exits.
pub enum MigrationLock {
    Postgres(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
    SqliteFile(File),
    /// In-memory SQLite: private to this process, nothing to guard.
    Unshared,
}

impl MigrationLock {
    /// Waits (polling) until this process holds the lock, saying so while it waits.
    pub async fn acquire(url: &DatabaseUrl, max_wait: Duration) -> Result<Self, Failure> {
        let started = Instant::now();
        let mut lock = Self::open(url).await?;
        let mut announced = false;
        loop {
            if lock.try_lock().await? {
                if announced {
                    tracing::info!(
                        "migration lock acquired after {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(lock);
            }
            if !announced {
                tracing::info!(
                    "waiting for the migration lock on {}: another migrator is running",
                    url.display
                );
                announced = true;
            }
            if started.elapsed() >= max_wait {
                return Err(Failure(format!(
                    "another migrator has held the migration lock on {} for over {}s; \
                     giving up (raise {LOCK_WAIT_ENV} to wait longer)",
                    url.display,
                    max_wait.as_secs()
                )));
            }
            crate::sleep(POLL.mul_f64(0.5 + random_fraction())).await;
        }
    }

    async fn open(url: &DatabaseUrl) -> Result<Self, Failure> {
        let unreachable = |err: sqlx::Error| {
            Failure(format!(
                "cannot open the lock connection to {}: {err}",
                url.display
            ))
        };
        Ok(match url.backend {
            DbBackend::Postgres => Self::Postgres(
                sqlx::PgConnection::connect(url.as_str())
                    .await
                    .map_err(unreachable)?,
            ),
            DbBackend::MySql => Self::MySql(
                sqlx::MySqlConnection::connect(url.as_str())
                    .await
                    .map_err(unreachable)?,
            ),
            _ => match url.sqlite_file() {
                Some(path) => {
                    let lock_path = sqlite_lock_path(path);
                    let file = File::options()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&lock_path)
                        .map_err(|err| {
                            Failure(format!(
                                "cannot open lock file {}: {err}",
                                lock_path.display()
                            ))
                        })?;
                    Self::SqliteFile(file)
                }
                None => Self::Unshared,
            },
        })
    }

    async fn try_lock(&mut self) -> Result<bool, Failure> {
        let failed = |err: sqlx::Error| Failure(format!("taking the migration lock failed: {err}"));
        match self {
            Self::Postgres(conn) => sqlx::query_scalar::<_, bool>(PG_TRY_LOCK)
                .fetch_one(conn)
                .await
                .map_err(failed),
            Self::MySql(conn) => match sqlx::query_scalar::<_, Option<i64>>(MYSQL_TRY_LOCK)
                .fetch_one(conn)
                .await
                .map_err(failed)?
            {
                Some(got) => Ok(got == 1),
                // GET_LOCK answers NULL on an error (a NULL name: no database selected), which
                // is not "someone else holds it".
                None => Err(Failure(
                    "taking the migration lock failed: GET_LOCK returned NULL \
                     (is a database selected?)"
                        .to_owned(),
                )),
            },
            Self::SqliteFile(file) => match file.try_lock() {
                Ok(()) => Ok(true),
                Err(std::fs::TryLockError::WouldBlock) => Ok(false),
                Err(std::fs::TryLockError::Error(err)) => Err(Failure(format!(
                    "locking the SQLite lock file failed: {err}"
                ))),
            },
            Self::Unshared => Ok(true),
        }
    }

    /// Releases the lock now rather than when the connection or process goes away.
    pub async fn release(self) {
        let result = match self {
            Self::Postgres(mut conn) => {
                let unlocked = sqlx::query(PG_UNLOCK).execute(&mut conn).await.map(|_| ());
                let _ = conn.close().await;
                unlocked
            }
            Self::MySql(mut conn) => {
                let unlocked = sqlx::query(MYSQL_UNLOCK)
                    .execute(&mut conn)
                    .await
                    .map(|_| ());
                let _ = conn.close().await;
                unlocked
            }
            Self::SqliteFile(file) => {
                let _ = file.unlock();
                Ok(())
            }
            Self::Unshared => Ok(()),
        };
        if let Err(err) = result {
            // The server drops the lock with the session anyway.
            tracing::warn!("releasing the migration lock failed ({err}); it ends with the session");
        }
    }
}

/// `<database file>.migrate-lock` beside the database, wherever the migrator was started: the
/// path is made absolute and free of symlinks, so that `sqlite:data/x.sqlite` run from the
/// workspace and `sqlite:////abs/.../data/x.sqlite` run from elsewhere take the same lock.
pub fn sqlite_lock_path(database: &Path) -> PathBuf {
    let name = match database.file_name() {
        Some(name) => format!("{}.migrate-lock", name.to_string_lossy()),
        None => "migrate-lock".to_owned(),
    };
    // The database file exists by now (the pool opened it); its folder at least must.
    let resolved = std::fs::canonicalize(database).ok().or_else(|| {
        let parent = database.parent().filter(|p| !p.as_os_str().is_empty());
        std::fs::canonicalize(parent.unwrap_or(Path::new(".")))
            .ok()
            .map(|dir| dir.join(database.file_name().unwrap_or_default()))
    });
    match resolved {
        Some(file) => file.with_file_name(name),
        None => database.with_file_name(name),
    }
}
