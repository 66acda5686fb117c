//! Test harness: every test gets a database of its own on the backend it names, with a random
//! name, dropped afterwards (also when the test panics). An unreachable backend fails the test:
//! nothing is skipped.
#![allow(dead_code)]

pub mod schema;

use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::sync::OnceLock;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

/// Server URLs without a database name; override with TEST_POSTGRES_URL / TEST_MYSQL_URL.
pub fn server_url(backend: Backend) -> String {
    // Each variable is read by name here, so tests/docs.rs finds it (docs/configuration.md).
    let (given, default) = match backend {
        Backend::Postgres => (
            std::env::var("TEST_POSTGRES_URL"),
            "postgres://postgres@127.0.0.1:5432",
        ),
        Backend::MySql => (
            std::env::var("TEST_MYSQL_URL"),
            "mysql://root@127.0.0.1:3306",
        ),
        Backend::Sqlite => return String::new(),
    };
    given
        .unwrap_or_else(|_| default.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The transaction-mode PgBouncer in front of [`server_url`]'s PostgreSQL (.ci/pgbouncer starts
/// it), without a database name; override with TEST_POSTGRES_POOLER_URL. Tests that need it
/// fail when it is unreachable.
pub fn pooler_url() -> String {
    std::env::var("TEST_POSTGRES_POOLER_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:6432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A PgBouncer like [`pooler_url`]'s that also drops the `options` startup parameter without a
/// word (`ignore_startup_parameters = options`); override with TEST_POSTGRES_DROPPING_POOLER_URL.
pub fn dropping_pooler_url() -> String {
    std::env::var("TEST_POSTGRES_DROPPING_POOLER_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:6434".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// `url` (a database on the PostgreSQL server of [`server_url`]) by way of the transaction-mode
/// pooler at TEST_POSTGRES_POOLER_URL, when that is set (CI's second pass of the API suite).
pub fn through_pooler(url: &str) -> Option<String> {
    std::env::var("TEST_POSTGRES_POOLER_URL").ok()?;
    let database = url.strip_prefix(&format!("{}/", server_url(Backend::Postgres)))?;
    Some(format!("{}/{database}", pooler_url()))
}

/// The test server of `backend` in parts: (scheme, `user[:password]` or empty, `host:port`).
pub fn server_parts(backend: Backend) -> (String, String, String) {
    let url = server_url(backend);
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url.as_str()));
    let (userinfo, host) = rest.rsplit_once('@').unwrap_or(("", rest));
    (scheme.to_owned(), userinfo.to_owned(), host.to_owned())
}

/// A URL on the test server of `backend` (so TEST_POSTGRES_URL / TEST_MYSQL_URL apply to the
/// tests that name a role, a password or a database of their own): its `user[:password]`
/// replaced by `userinfo` when given, and `path` (a database, perhaps with a query; empty for
/// none) after it.
pub fn url_on(backend: Backend, userinfo: Option<&str>, path: &str) -> String {
    let (scheme, own, host) = server_parts(backend);
    let userinfo = userinfo.unwrap_or(&own);
    let at = if userinfo.is_empty() { "" } else { "@" };
    let slash = if path.is_empty() { "" } else { "/" };
    format!("{scheme}://{userinfo}{at}{host}{slash}{path}")
}

pub fn random_name() -> String {
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("t_{bits:016x}")
}

/// A fresh database for one test.
pub struct TestDb {
    pub backend: Backend,
    pub name: String,
    pub url: String,
    pub db: DatabaseConnection,
    sqlite_dir: Option<PathBuf>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let name = random_name();
        let (url, sqlite_dir) = match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("billing-{name}"));
                std::fs::create_dir_all(&dir).expect("create temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display());
                (url, Some(dir))
            }
            _ => {
                let admin = admin(backend).await;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap_or_else(|e| panic!("{backend:?} is unreachable or refused: {e}"));
                let _ = admin.close().await;
                (format!("{}/{name}", server_url(backend)), None)
            }
        };
        let db = connect(&url).await;
        Self {
            backend,
            name,
            url,
            db,
            sqlite_dir,
        }
    }

    pub fn db_backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Runs SQL written with `$1`-style placeholders on PostgreSQL and `?` elsewhere.
    pub fn stmt(&self, pg_sql: &str, values: Vec<sea_orm::Value>) -> Statement {
        let sql = match self.backend {
            Backend::Postgres => pg_sql.to_owned(),
            _ => question_marks(pg_sql),
        };
        Statement::from_sql_and_values(self.db_backend(), sql, values)
    }

    pub async fn exec(&self, sql: &str) {
        self.db
            .execute_unprepared(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of every row, as text.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        let rows = self
            .db
            .query_all_raw(Statement::from_string(self.db_backend(), sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter().map(|row| first_as_text(row, sql)).collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = self.sqlite_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
            return;
        }
        let (backend, name) = (self.backend, self.name.clone());
        // Drop runs inside the test's runtime; a thread with its own runtime may block.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let admin = admin(backend).await;
                let sql = match backend {
                    Backend::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    _ => format!("DROP DATABASE IF EXISTS {name}"),
                };
                let _ = admin.execute_unprepared(&sql).await;
                let _ = admin.close().await;
            });
        })
        .join();
    }
}

/// Column 0 as text, whatever type the backend returned it as.
fn first_as_text(row: &sea_orm::QueryResult, sql: &str) -> String {
    if let Ok(text) = row.try_get_by_index::<Option<String>>(0) {
        return text.unwrap_or_else(|| "NULL".to_owned());
    }
    if let Ok(number) = row.try_get_by_index::<Option<i64>>(0) {
        return number.map_or_else(|| "NULL".to_owned(), |n| n.to_string());
    }
    match row.try_get_by_index::<Option<Vec<u8>>>(0) {
        Ok(bytes) => bytes.map_or_else(
            || "NULL".to_owned(),
            |b| String::from_utf8_lossy(&b).into_owned(),
        ),
        Err(e) => panic!("{sql}: {e}"),
    }
}

fn question_marks(pg_sql: &str) -> String {
    let mut out = String::with_capacity(pg_sql.len());
    let mut chars = pg_sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

async fn admin(backend: Backend) -> DatabaseConnection {
    let url = match backend {
        Backend::Postgres => format!("{}/postgres", server_url(backend)),
        _ => server_url(backend),
    };
    connect(&url).await
}

pub async fn connect(url: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(5)
        .connect_timeout(std::time::Duration::from_secs(10))
        .acquire_timeout(std::time::Duration::from_secs(30))
        .sqlx_logging(false);
    migration::connect::without_pool_reaper(&mut options);
    Database::connect(options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e} (is the server running?)"))
}

/// `cargo` for a test to run, without what `cargo test` set for this test process: that
/// describes the test's package, and build scripts (ring's, for one) re-run when any of it
/// differs from the outer build's environment, rebuilding every crate above them.
pub fn cargo() -> std::process::Command {
    let mut cargo = std::process::Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*name,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
            )
        {
            cargo.env_remove(&*name);
        }
    }
    cargo
}

/// The `migration` binary, built once per test run.
pub fn migration_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // `--workspace`: the dependency features of `cargo test --workspace`, so after it this
        // builds nothing (`-p migration` would resolve a narrower set and rebuild them).
        let status = cargo()
            .args(["build", "--quiet", "--workspace", "--bin", "migration"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the migration binary failed");
        let deps = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test> → target/<profile>/migration
        deps.parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .join("migration")
    })
    .clone()
}

/// One test body, three tests: `<name>::postgres`, `<name>::mysql`, `<name>::sqlite`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name(support::Backend::Postgres).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() { super::$name(support::Backend::MySql).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$name(support::Backend::Sqlite).await }
        }
    )*};
}
