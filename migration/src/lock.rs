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
//!
//! That connection sits idle while the migrations run, so its session opts out of the server's
//! idle timeouts and keeps TCP alive. A proxy or an administrator can still close it, so every
//! step first checks that the lock is still held ([`verify_held`]) and stops with a clear error
//! when it is not: another migrator may have taken it.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::future::{Future, poll_fn};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm_migration::sea_orm::sqlx::{self, Connection};
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

use crate::connect::DatabaseUrl;
use crate::error::{Error, raise};
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

/// Who holds the lock, as the server names that session: enough for any connection to the
/// same database to check that the lock is still there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// `pg_backend_pid()` of the lock's session.
    Postgres(i32),
    /// `CONNECTION_ID()` of the lock's connection.
    MySql(u64),
}

/// A held migration lock; released on [`MigrationLock::release`] or when the process exits.
pub enum MigrationLock {
    Postgres(sqlx::PgConnection, Holder),
    MySql(sqlx::MySqlConnection, Holder),
    SqliteFile(File),
    /// In-memory SQLite: private to this process, nothing to guard.
    Unshared,
}

/// Session settings for the lock's connection, which stays idle for as long as the migrations
/// take: no idle timeout may end it (`idle_session_timeout` is PostgreSQL 14+; an older server
/// rejects the name, which is then nothing to turn off), and keepalives stop NAT and load
/// balancers from forgetting the connection.
const PG_SESSION: [&str; 5] = [
    "SET idle_session_timeout = 0",
    "SET idle_in_transaction_session_timeout = 0",
    "SET tcp_keepalives_idle = 60",
    "SET tcp_keepalives_interval = 10",
    "SET tcp_keepalives_count = 6",
];
/// A year, the most both variables accept.
const MYSQL_SESSION: &str =
    "SET SESSION wait_timeout = 31536000, SESSION interactive_timeout = 31536000";
const PG_UNDEFINED_OBJECT: &str = "42704";

const PG_HOLDS: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND pid = $1 \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND classid = hashtext('billing-migrator')::oid \
     AND objid = hashtext(current_database())::oid AND objsubid = 2)";
const MYSQL_HOLDS: &str = "SELECT COALESCE(\
     IS_USED_LOCK(LEFT(CONCAT('billing-migrator:', DATABASE()), 64)) = ?, 0)";

impl MigrationLock {
    /// Waits (polling) until this process holds the lock, saying so while it waits.
    pub async fn acquire(url: &DatabaseUrl, max_wait: Duration) -> Result<Self, Error> {
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
                return Err(Error::LockWaitedOut {
                    target: url.display.clone(),
                    waited: max_wait,
                });
            }
            crate::sleep(POLL.mul_f64(0.5 + random_fraction())).await;
        }
    }

    async fn open(url: &DatabaseUrl) -> Result<Self, Error> {
        let failed = |doing: &'static str| {
            move |source: sqlx::Error| Error::LockConnection {
                doing,
                target: url.display.clone(),
                detail: url.scrub(&source.to_string()),
                source,
            }
        };
        let unreachable = failed("open");
        let setup = failed("set up");
        Ok(match url.backend {
            DbBackend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(url.as_str())
                    .await
                    .map_err(unreachable)?;
                for sql in PG_SESSION {
                    match sqlx::query(sql).execute(&mut conn).await {
                        Ok(_) => {}
                        Err(err) if sqlstate(&err).as_deref() == Some(PG_UNDEFINED_OBJECT) => {
                            tracing::debug!("{sql}: {err}")
                        }
                        Err(err) => return Err(setup(err)),
                    }
                }
                let pid = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                    .fetch_one(&mut conn)
                    .await
                    .map_err(setup)?;
                Self::Postgres(conn, Holder::Postgres(pid))
            }
            DbBackend::MySql => {
                let mut conn = sqlx::MySqlConnection::connect(url.as_str())
                    .await
                    .map_err(unreachable)?;
                sqlx::query(MYSQL_SESSION)
                    .execute(&mut conn)
                    .await
                    .map_err(setup)?;
                let id = sqlx::query_scalar::<_, u64>("SELECT CONNECTION_ID()")
                    .fetch_one(&mut conn)
                    .await
                    .map_err(setup)?;
                Self::MySql(conn, Holder::MySql(id))
            }
            _ => match url.sqlite_file() {
                Some(path) => {
                    let lock_path = sqlite_lock_path(path);
                    let file = File::options()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&lock_path)
                        .map_err(|err| Error::LockFailed {
                            detail: format!("cannot open lock file {}: {err}", lock_path.display()),
                        })?;
                    Self::SqliteFile(file)
                }
                None => Self::Unshared,
            },
        })
    }

    async fn try_lock(&mut self) -> Result<bool, Error> {
        let failed = |err: sqlx::Error| Error::LockFailed {
            detail: err.to_string(),
        };
        match self {
            Self::Postgres(conn, _) => sqlx::query_scalar::<_, bool>(PG_TRY_LOCK)
                .fetch_one(conn)
                .await
                .map_err(failed),
            Self::MySql(conn, _) => match sqlx::query_scalar::<_, Option<i64>>(MYSQL_TRY_LOCK)
                .fetch_one(conn)
                .await
                .map_err(failed)?
            {
                Some(got) => Ok(got == 1),
                // GET_LOCK answers NULL on an error (a NULL name: no database selected), which
                // is not "someone else holds it".
                None => Err(Error::LockFailed {
                    detail: "GET_LOCK returned NULL (is a database selected?)".to_owned(),
                }),
            },
            Self::SqliteFile(file) => match file.try_lock() {
                Ok(()) => Ok(true),
                Err(std::fs::TryLockError::WouldBlock) => Ok(false),
                Err(std::fs::TryLockError::Error(err)) => Err(Error::LockFailed {
                    detail: format!("locking the SQLite lock file failed: {err}"),
                }),
            },
            Self::Unshared => Ok(true),
        }
    }

    /// The session holding the lock, where the server could drop it from under us.
    pub fn holder(&self) -> Option<Holder> {
        match self {
            Self::Postgres(_, holder) | Self::MySql(_, holder) => Some(*holder),
            // An OS file lock lasts as long as the open file, which this process owns.
            Self::SqliteFile(_) | Self::Unshared => None,
        }
    }

    /// Releases the lock now rather than when the connection or process goes away.
    pub async fn release(self) {
        let result = match self {
            Self::Postgres(mut conn, _) => {
                let unlocked = sqlx::query(PG_UNLOCK).execute(&mut conn).await.map(|_| ());
                let _ = conn.close().await;
                unlocked
            }
            Self::MySql(mut conn, _) => {
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

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code().map(|code| code.into_owned()))
}

thread_local! {
    /// The lock the migrations now running are under (see [`while_held`]).
    static HELD: Cell<Option<Holder>> = const { Cell::new(None) };
    /// The database that lock is on, for [`verify_held_elsewhere`].
    static HELD_ON: RefCell<Option<Arc<DatabaseUrl>>> = const { RefCell::new(None) };
}

/// Runs `work` (SeaORM's runner, which calls our steps) with `holder` (a lock on `url`) known
/// to every step it reaches, on whichever runtime and thread polls it: the holder is in place
/// during each poll.
pub async fn while_held<F: Future>(
    holder: Option<Holder>,
    url: &DatabaseUrl,
    work: F,
) -> F::Output {
    struct Restore(Option<Holder>, Option<Arc<DatabaseUrl>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            HELD.set(self.0);
            HELD_ON.set(self.1.take());
        }
    }
    let url = Arc::new(url.clone());
    let mut work = pin!(work);
    poll_fn(|cx| {
        let _restore = Restore(
            HELD.replace(holder),
            HELD_ON.replace(Some(Arc::clone(&url))),
        );
        work.as_mut().poll(cx)
    })
    .await
}

/// [`verify_held`] on a connection of its own, for when the migration's connection cannot ask:
/// on PostgreSQL a failed statement aborts the migration's transaction, and the step's "already
/// exists" may be the doing of the migrator that took our lost lock. When the check itself
/// cannot run, it says nothing (the caller keeps the step's own error).
pub async fn verify_held_elsewhere() -> Result<(), DbErr> {
    let (Some(holder), Some(url)) = (HELD.get(), HELD_ON.with_borrow(Clone::clone)) else {
        return Ok(());
    };
    let held = match holder {
        Holder::Postgres(pid) => async {
            let mut conn = sqlx::PgConnection::connect(url.as_str()).await?;
            let held = sqlx::query_scalar::<_, bool>(PG_HOLDS)
                .bind(pid)
                .fetch_one(&mut conn)
                .await;
            let _ = conn.close().await;
            held
        }
        .await
        .ok(),
        Holder::MySql(id) => async {
            let mut conn = sqlx::MySqlConnection::connect(url.as_str()).await?;
            let held = sqlx::query_scalar::<_, i64>(MYSQL_HOLDS)
                .bind(id)
                .fetch_one(&mut conn)
                .await;
            let _ = conn.close().await;
            held.map(|held| held == 1)
        }
        .await
        .ok(),
    };
    match held {
        Some(false) => Err(lost_lock()),
        Some(true) | None => Ok(()),
    }
}

fn lost_lock() -> DbErr {
    raise(Error::LostLock)
}

/// Fails when the migration lock this work runs under (if any) is no longer held: the lock's
/// connection was closed (idle timeout, proxy, `pg_terminate_backend`, `KILL`), and another
/// migrator may be running the same steps right now.
pub async fn verify_held<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    let Some(holder) = HELD.get() else {
        return Ok(());
    };
    let backend = db.get_database_backend();
    let stmt = match holder {
        Holder::Postgres(pid) => Statement::from_sql_and_values(backend, PG_HOLDS, [pid.into()]),
        Holder::MySql(id) => Statement::from_sql_and_values(backend, MYSQL_HOLDS, [id.into()]),
    };
    let held = match db.query_one_raw(stmt).await? {
        Some(row) => match holder {
            Holder::Postgres(_) => row.try_get_by_index::<bool>(0)?,
            Holder::MySql(_) => row.try_get_by_index::<i64>(0)? == 1,
        },
        None => false,
    };
    if held {
        return Ok(());
    }
    Err(lost_lock())
}
