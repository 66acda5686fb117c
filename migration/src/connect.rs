//! Opening a database from a URL, with one readable message for each way it can fail.
//!
//! SeaORM's stock runner panics with "Fail to acquire database connection: PoolTimedOut" for
//! all of them; here each becomes a [`Failure`] that says what is wrong and what to do.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sea_orm_migration::sea_orm::sqlx;
use sea_orm_migration::sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    Statement,
};

/// A user-facing error: one message, no backtrace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// A database URL that parsed, with a password-free form for messages.
#[derive(Clone)]
pub struct DatabaseUrl {
    raw: String,
    pub backend: DbBackend,
    /// The URL as [`redact`] shows it: safe to print.
    pub display: String,
    sqlite_file: Option<PathBuf>,
}

/// Shows the redacted form only: a `{:?}` in a log line must not print the password either.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseUrl")
            .field("backend", &self.backend)
            .field("display", &self.display)
            .finish_non_exhaustive()
    }
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, Failure> {
        let raw = raw.trim();
        let display = redact(raw);
        let scheme = raw.split_once(':').map(|(s, _)| s).unwrap_or("");
        // Only the scheme is renamed: a user or a database called `mariadb` keeps its name.
        let raw = match scheme {
            "mariadb" => format!("mysql{}", &raw[scheme.len()..]),
            _ => raw.to_owned(),
        };
        let malformed = |err: sqlx::Error| {
            Failure(format!(
                "DATABASE_URL {display:?} is malformed: {}",
                first_line(&err.to_string())
            ))
        };
        let mut sqlite_file = None;
        let backend = match scheme {
            "postgres" | "postgresql" => {
                sqlx::postgres::PgConnectOptions::from_str(&raw).map_err(malformed)?;
                DbBackend::Postgres
            }
            "mysql" | "mariadb" => {
                let options =
                    sqlx::mysql::MySqlConnectOptions::from_str(&raw).map_err(malformed)?;
                // Without one, DATABASE() is NULL: the lock name, the catalog probes and
                // every table would have nowhere to go.
                if options.get_database().is_none_or(str::is_empty) {
                    return Err(Failure(format!(
                        "DATABASE_URL {display:?} names no database: MySQL and MariaDB need one \
                         at the end of the URL, e.g. mysql://user@127.0.0.1:3306/billing"
                    )));
                }
                DbBackend::MySql
            }
            "sqlite" => {
                let options =
                    sqlx::sqlite::SqliteConnectOptions::from_str(&raw).map_err(malformed)?;
                sqlite_file = file_behind(&raw, options.get_filename());
                DbBackend::Sqlite
            }
            _ => {
                return Err(Failure(format!(
                    "DATABASE_URL {display:?} is not a database URL: it should start with \
                     postgres://, mysql:// or sqlite:, e.g. postgres://user@127.0.0.1:5432/billing"
                )));
            }
        };
        Ok(Self {
            raw,
            backend,
            display,
            sqlite_file,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The SQLite file behind the URL, as sqlx reads the URL, if it names one (not `:memory:`).
    pub fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }
}

/// sqlx names an in-memory database `file:sqlx-in-memory-N` (for `:memory:`) or keeps the
/// given name with `mode=memory`; neither is a file.
fn file_behind(raw: &str, filename: &Path) -> Option<PathBuf> {
    let in_memory = filename.as_os_str().is_empty()
        || filename
            .to_string_lossy()
            .starts_with("file:sqlx-in-memory-")
        || raw
            .split_once('?')
            .is_some_and(|(_, query)| query.split('&').any(|pair| pair == "mode=memory"));
    (!in_memory).then(|| filename.to_path_buf())
}

/// Query parameters that carry a secret; sqlx reads `password` for PostgreSQL and MySQL.
const SECRET_PARAMETERS: [&str; 2] = ["password", "sslpassword"];

/// The one form in which a database URL is shown anywhere: the password and any
/// `password`/`sslpassword` parameter dropped. A URL that does not parse with a host (or has an
/// `@` after its host, the sign of a password that swallowed the rest) shows only its scheme.
pub fn redact(raw: &str) -> String {
    let raw = raw.trim();
    let Ok(mut url) = url::Url::parse(raw) else {
        return scheme_only(raw);
    };
    let sqlite = url.scheme() == "sqlite";
    let after_host = format!(
        "{}{}{}",
        url.path(),
        url.query().unwrap_or(""),
        url.fragment().unwrap_or("")
    );
    if !sqlite && (!url.has_host() || after_host.contains('@')) {
        return scheme_only(raw);
    }
    let mut changed = false;
    if url.password().is_some() {
        changed |= url.set_password(None).is_ok();
    }
    let secret = |key: &str| {
        SECRET_PARAMETERS
            .iter()
            .any(|s| key.eq_ignore_ascii_case(s))
    };
    if url.query_pairs().any(|(key, _)| secret(&key)) {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(key, _)| !secret(key))
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        changed = true;
    }
    // Unchanged URLs are shown as typed (the parser would re-encode a SQLite path).
    if changed {
        url.to_string()
    } else {
        raw.to_owned()
    }
}

fn scheme_only(raw: &str) -> String {
    match raw.split_once(':') {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            format!("{scheme}:(rest hidden)")
        }
        _ => "(hidden)".to_owned(),
    }
}

/// `DATABASE_SCHEMA=` (an empty line in a `.env` file) means "not set", like an absent one.
pub fn schema_or_unset(given: Option<&str>) -> Option<&str> {
    given.map(str::trim).filter(|schema| !schema.is_empty())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// How long to keep trying to reach the server before saying it is unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a pool of at most `max_connections`, or says clearly why it cannot.
pub async fn open(
    url: &DatabaseUrl,
    schema: Option<&str>,
    timeout: Duration,
    max_connections: u32,
) -> Result<DatabaseConnection, Failure> {
    open_with(url, schema, timeout, max_connections, |_| {}).await
}

/// [`open`], with `tune` adding options of the caller's (the API bounds lock waits per
/// connection) before the pool connects.
pub async fn open_with(
    url: &DatabaseUrl,
    schema: Option<&str>,
    timeout: Duration,
    max_connections: u32,
    tune: impl FnOnce(&mut ConnectOptions),
) -> Result<DatabaseConnection, Failure> {
    if let Some(file) = url.sqlite_file() {
        // SQLite creates the file (with mode=rwc) but not the folder it lives in.
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| {
                Failure(format!(
                    "cannot create folder {} for the SQLite database: {err}",
                    dir.display()
                ))
            })?;
        }
    }
    let mut options = ConnectOptions::new(url.as_str().to_owned());
    options
        .connect_timeout(timeout)
        .acquire_timeout(timeout)
        .max_connections(max_connections)
        .sqlx_logging(false);
    let schema = schema_or_unset(schema).filter(|_| url.backend == DbBackend::Postgres);
    if url.backend == DbBackend::Postgres {
        // Pinned to exactly one schema, `public` by default, as stock sea-orm-cli does: the
        // server's default `"$user", public` would move unqualified names (SeaORM's
        // `seaql_migrations`) into any schema named after the role. Quoted here so that
        // SeaORM takes the name as it is (it splits unquoted names at commas).
        let schema = schema.unwrap_or(crate::schema::DEFAULT_SCHEMA);
        options.set_schema_search_path(format!("\"{}\"", schema.replace('"', "\"\"")));
    }
    tune(&mut options);
    let db = Database::connect(options)
        .await
        .map_err(|err| explain_connect_error(url, timeout, &err))?;
    if let Some(schema) = schema {
        require_schemas(&db, url, schema).await?;
    }
    Ok(db)
}

/// PostgreSQL accepts a `search_path` naming schemas that do not exist; every statement after
/// that would fail with "no schema has been selected to create in".
async fn require_schemas(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    search_path: &str,
) -> Result<(), Failure> {
    for schema in search_path.split(',') {
        let name = schema.trim().trim_matches('"');
        let found = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                [name.into()],
            ))
            .await
            .map_err(|err| {
                Failure(format!(
                    "cannot look up schema {name:?} in {}: {err}",
                    url.display
                ))
            })?;
        if found.is_none() {
            return Err(Failure(format!(
                "schema {name:?} does not exist in {}: create it (CREATE SCHEMA ...) or fix \
                 -s/--database-schema (DATABASE_SCHEMA)",
                url.display
            )));
        }
    }
    Ok(())
}

/// Turns a connection error into the sentence a user needs.
pub fn explain_connect_error(url: &DatabaseUrl, timeout: Duration, err: &DbErr) -> Failure {
    let target = &url.display;
    let sqlx_error = match err {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e.as_ref()),
        _ => None,
    };
    let message = match sqlx_error {
        Some(sqlx::Error::PoolTimedOut) | Some(sqlx::Error::Io(_)) => format!(
            "cannot reach the database server for {target} (tried for {}s): is it running, \
             and are the host and port right?",
            timeout.as_secs()
        ),
        Some(sqlx::Error::Configuration(e)) => format!("DATABASE_URL {target} is malformed: {e}"),
        Some(sqlx::Error::Database(db)) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let mysql_number = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|e| e.number());
            match (code.as_str(), mysql_number) {
                ("28P01" | "28000", _) | (_, Some(1045)) => format!(
                    "the server for {target} refused the credentials: check the user name and \
                     password in DATABASE_URL ({})",
                    db.message()
                ),
                ("3D000", _) | (_, Some(1049)) => format!(
                    "the database named in {target} does not exist: create it first \
                     (e.g. `createdb NAME` or `CREATE DATABASE NAME`) ({})",
                    db.message()
                ),
                // SQLITE_CANTOPEN
                ("14", _) => format!(
                    "cannot open the SQLite database {target}: the file is missing or not \
                     writable (add ?mode=rwc to create it) ({})",
                    db.message()
                ),
                _ => format!(
                    "the server for {target} refused the connection: {}",
                    db.message()
                ),
            }
        }
        Some(other) => format!(
            "cannot connect to {target}: {}",
            first_line(&other.to_string())
        ),
        None => format!("cannot connect to {target}: {err}"),
    };
    Failure(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (URL, what must be shown, secrets that must not appear).
    const REDACTIONS: &[(&str, &str, &[&str])] = &[
        (
            "postgres://bob:hunter2@db:5432/app",
            "postgres://bob@db:5432/app",
            &["hunter2"],
        ),
        // A `/` in the password ends the authority early: the port does not parse.
        (
            "postgres://root:s3cr/et@host:1/x",
            "postgres:(rest hidden)",
            &["s3cr", "et@"],
        ),
        // A numeric password before the `/` reads as a port: the `@` left in the path tells.
        (
            "postgres://root:1234/x@host/db",
            "postgres:(rest hidden)",
            &["1234"],
        ),
        (
            "postgres://app@db/app?sslmode=require&password=hunter2",
            "postgres://app@db/app?sslmode=require",
            &["hunter2"],
        ),
        (
            "postgres://app@db/app?PASSWORD=hunter2&sslpassword=keypass",
            "postgres://app@db/app",
            &["hunter2", "keypass"],
        ),
        // No `//`: sqlx reads it, but there is no host to show.
        (
            "postgres:user:pw@host/db",
            "postgres:(rest hidden)",
            &["pw@"],
        ),
        ("mysql://u:p@h/db", "mysql://u@h/db", &[":p@"]),
        (
            "mariadb://u:p4ss@h:3306/db",
            "mariadb://u@h:3306/db",
            &["p4ss"],
        ),
        // Percent-encoded: neither form may show.
        (
            "postgres://u:p%40ss%2Fw@h/db",
            "postgres://u@h/db",
            &["p%40ss", "p@ss", "ss%2Fw"],
        ),
        (
            "postgres://u:p@ss@h/db",
            "postgres://u@h/db",
            &["p@ss", "p%40ss"],
        ),
        ("sqlite://data/x.sqlite", "sqlite://data/x.sqlite", &[]),
        (
            "sqlite:////abs/my db.sqlite?mode=rwc",
            "sqlite:////abs/my db.sqlite?mode=rwc",
            &[],
        ),
        ("sqlite::memory:", "sqlite::memory:", &[]),
        ("not a url", "(hidden)", &[]),
        ("hunter2", "(hidden)", &["hunter2"]),
        ("://u:hunter2@h", "(hidden)", &["hunter2"]),
        ("redis://localhost", "redis://localhost", &[]),
    ];

    #[test]
    fn redaction_table() {
        for (url, shown, secrets) in REDACTIONS {
            let redacted = redact(url);
            assert_eq!(&redacted, shown, "redact({url:?})");
            for secret in *secrets {
                assert!(!redacted.contains(secret), "{url:?} shows {secret:?}");
            }
        }
    }

    #[test]
    fn debug_output_is_redacted() {
        let url = DatabaseUrl::parse("postgres://u:hunter2@h/db?password=hunter3").unwrap();
        let debug = format!("{url:?}");
        assert!(!debug.contains("hunter"), "{debug}");
        assert!(debug.contains("postgres://u@h/db"), "{debug}");
    }

    #[test]
    fn messages_about_bad_urls_never_show_the_password() {
        for url in [
            "postgres://root:s3cr/et@host:1/x",
            "postgres://me:s3cr@host:notaport/db",
            "mysql://root:s3cr@127.0.0.1:3306",
            "redis://u:s3cr@h",
        ] {
            let Err(failure) = DatabaseUrl::parse(url) else {
                panic!("{url} parsed");
            };
            assert!(!failure.0.contains("s3cr"), "{failure}");
        }
    }

    #[test]
    fn rejects_unknown_scheme_and_garbage() {
        assert!(DatabaseUrl::parse("not a url").is_err());
        assert!(DatabaseUrl::parse("http://localhost").is_err());
        assert!(DatabaseUrl::parse("postgres://u@host:notaport/db").is_err());
    }

    #[test]
    fn mariadb_is_renamed_in_the_scheme_only() {
        let url = DatabaseUrl::parse("mariadb://mariadb:pw@h/mariadb").unwrap();
        assert_eq!(url.as_str(), "mysql://mariadb:pw@h/mariadb");
        assert_eq!(url.backend, DbBackend::MySql);
        let url = DatabaseUrl::parse("mysql://mariadb:pw@h/db").unwrap();
        assert_eq!(url.as_str(), "mysql://mariadb:pw@h/db");
        let url = DatabaseUrl::parse("postgres://mariadb:pw@h/db").unwrap();
        assert_eq!(url.as_str(), "postgres://mariadb:pw@h/db");
    }

    #[test]
    fn mysql_without_a_database_is_refused() {
        for url in ["mysql://root@127.0.0.1:3306", "mariadb://root@h:3306/"] {
            let Err(failure) = DatabaseUrl::parse(url) else {
                panic!("{url} parsed");
            };
            assert!(failure.0.contains("names no database"), "{failure}");
        }
        assert!(DatabaseUrl::parse("mysql://root@h:3306/billing").is_ok());
    }

    #[test]
    fn finds_sqlite_file_as_sqlx_does() {
        let file = |url: &str| {
            DatabaseUrl::parse(url)
                .unwrap()
                .sqlite_file()
                .map(Path::to_path_buf)
        };
        assert_eq!(
            file("sqlite://data/x.sqlite?mode=rwc"),
            Some(PathBuf::from("data/x.sqlite"))
        );
        assert_eq!(
            file("sqlite:data/x.sqlite"),
            Some(PathBuf::from("data/x.sqlite"))
        );
        assert_eq!(
            file("sqlite:///abs/x.sqlite"),
            Some(PathBuf::from("/abs/x.sqlite"))
        );
        // Four slashes: "sqlite://" and then the absolute path "//abs/x.sqlite".
        assert_eq!(
            file("sqlite:////abs/x.sqlite?mode=rwc"),
            Some(PathBuf::from("/abs/x.sqlite"))
        );
        assert_eq!(file("sqlite::memory:"), None);
        assert_eq!(file("sqlite://?mode=memory"), None);
        assert_eq!(file("sqlite://x.sqlite?mode=memory"), None);
    }

    #[test]
    fn an_empty_schema_is_unset() {
        assert_eq!(schema_or_unset(None), None);
        assert_eq!(schema_or_unset(Some("")), None);
        assert_eq!(schema_or_unset(Some("  ")), None);
        assert_eq!(schema_or_unset(Some("billing")), Some("billing"));
    }
}
