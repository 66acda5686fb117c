//! Opening a database from a URL, with one readable message for each way it can fail.
//!
//! SeaORM's stock runner panics with "Fail to acquire database connection: PoolTimedOut" for
//! all of them; here each becomes a [`Failure`] that says what is wrong and what to do.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sea_orm_migration::sea_orm::sqlx;
use sea_orm_migration::sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
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
#[derive(Clone, Debug)]
pub struct DatabaseUrl {
    raw: String,
    pub backend: DbBackend,
    /// `scheme://user@host:port/db` without the password, safe to print.
    pub display: String,
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, Failure> {
        let raw = raw.trim();
        let scheme = raw.split_once(':').map(|(s, _)| s).unwrap_or("");
        let (backend, checked) = match scheme {
            "postgres" | "postgresql" => (
                DbBackend::Postgres,
                sqlx::postgres::PgConnectOptions::from_str(raw).map(|_| ()),
            ),
            "mysql" | "mariadb" => (
                DbBackend::MySql,
                sqlx::mysql::MySqlConnectOptions::from_str(&raw.replacen("mariadb:", "mysql:", 1))
                    .map(|_| ()),
            ),
            "sqlite" => (
                DbBackend::Sqlite,
                sqlx::sqlite::SqliteConnectOptions::from_str(raw).map(|_| ()),
            ),
            _ => {
                return Err(Failure(format!(
                    "DATABASE_URL {:?} is not a database URL: it should start with postgres://, \
                     mysql:// or sqlite:, e.g. postgres://user@127.0.0.1:5432/billing",
                    redact(raw)
                )));
            }
        };
        checked.map_err(|err| {
            Failure(format!(
                "DATABASE_URL {:?} is malformed: {}",
                redact(raw),
                first_line(&err.to_string())
            ))
        })?;
        Ok(Self {
            raw: raw.replacen("mariadb:", "mysql:", 1),
            backend,
            display: redact(raw),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The SQLite file behind the URL, if it names one (not `:memory:`).
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        if self.backend != DbBackend::Sqlite {
            return None;
        }
        let rest = self
            .raw
            .trim_start_matches("sqlite:")
            .trim_start_matches("//");
        let path = rest.split('?').next().unwrap_or("");
        if path.is_empty() || path.contains(":memory:") || rest.contains("mode=memory") {
            return None;
        }
        Some(std::path::PathBuf::from(path))
    }
}

/// `scheme://user:secret@host/db` → `scheme://user@host/db`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_owned(),
    }
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
    if let (Some(schema), DbBackend::Postgres) = (schema, url.backend) {
        options.set_schema_search_path(schema.to_owned());
    }
    tune(&mut options);
    Database::connect(options)
        .await
        .map_err(|err| explain_connect_error(url, timeout, &err))
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

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact("postgres://bob:hunter2@db:5432/app"),
            "postgres://bob@db:5432/app"
        );
        assert_eq!(redact("sqlite://data/x.sqlite"), "sqlite://data/x.sqlite");
    }

    #[test]
    fn rejects_unknown_scheme_and_garbage() {
        assert!(DatabaseUrl::parse("not a url").is_err());
        assert!(DatabaseUrl::parse("http://localhost").is_err());
        assert!(DatabaseUrl::parse("postgres://u@host:notaport/db").is_err());
    }

    #[test]
    fn finds_sqlite_file() {
        let url = DatabaseUrl::parse("sqlite://data/x.sqlite?mode=rwc").unwrap();
        assert_eq!(
            url.sqlite_file().unwrap(),
            std::path::Path::new("data/x.sqlite")
        );
        let memory = DatabaseUrl::parse("sqlite::memory:").unwrap();
        assert_eq!(memory.sqlite_file(), None);
    }
}
