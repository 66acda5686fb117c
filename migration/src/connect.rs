//! Opening a database from a URL, with one readable message for each way it can fail.
//!
//! SeaORM's stock runner panics with "Fail to acquire database connection: PoolTimedOut" for
//! all of them; here each becomes a [`ConnectError`] that says what is wrong and what to do.
//! This module is the one place that parses, redacts and opens database URLs: the `migration`
//! command and the API server both use it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sea_orm_migration::sea_orm::sqlx;
use sea_orm_migration::sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    Statement, TransactionTrait,
};

/// Why a database could not be opened, by kind. Every message is safe to print: text that came
/// from the server is scrubbed of the URL's secrets when the error is made (the raw driver
/// error, kept as the [`std::error::Error::source`], is not: log the message, not the chain).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DATABASE_URL {url:?} is malformed: {detail}")]
    Malformed { url: String, detail: String },
    #[error(
        "DATABASE_URL {url:?} has no `//` after `{scheme}:`: sqlx would read all of it as a \
         database name on the default host, not the server you meant. Write \
         {scheme}://user:password@host:port/database"
    )]
    NoAuthority { url: String, scheme: String },
    #[error(
        "DATABASE_URL {url:?} names no database: MySQL and MariaDB need one at the end of the \
         URL, e.g. mysql://user@127.0.0.1:3306/billing"
    )]
    NoDatabase { url: String },
    #[error(
        "DATABASE_URL {url:?} is not a database URL: it should start with postgres://, \
         mysql:// or sqlite:, e.g. postgres://user@127.0.0.1:5432/billing"
    )]
    NotADatabaseUrl { url: String },
    #[error(
        "-s/--database-schema (DATABASE_SCHEMA) {given:?} is wrapped in double quotes: give the \
         bare name ({}); it is used exactly as written, case included",
        &given[1..given.len() - 1]
    )]
    QuotedSchema { given: String },
    #[error(
        "cannot reach the database server for {target} (tried for {waited_secs}s): is it \
         running, and are the host and port right?"
    )]
    Unreachable {
        target: String,
        waited_secs: u64,
        #[source]
        source: Box<DbErr>,
    },
    #[error(
        "the server for {target} refused the credentials: check the user name and password in \
         DATABASE_URL ({detail})"
    )]
    Credentials {
        target: String,
        detail: String,
        #[source]
        source: Box<DbErr>,
    },
    #[error(
        "the database named in {target} does not exist: create it first (e.g. `createdb NAME` \
         or `CREATE DATABASE NAME`) ({detail})"
    )]
    DatabaseMissing {
        target: String,
        detail: String,
        #[source]
        source: Box<DbErr>,
    },
    #[error(
        "cannot open the SQLite database {target}: the file is missing or not writable (add \
         ?mode=rwc to create it) ({detail})"
    )]
    SqliteCannotOpen {
        target: String,
        detail: String,
        #[source]
        source: Box<DbErr>,
    },
    #[error(
        "the SQLite database {} does not exist: nothing is applied yet (`migration up` creates \
         it)",
        file.display()
    )]
    SqliteFileMissing { file: PathBuf },
    #[error("cannot create folder {} for the SQLite database: {source}", dir.display())]
    SqliteFolder {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the server for {target} refused the connection: {detail}")]
    Refused {
        target: String,
        detail: String,
        #[source]
        source: Box<DbErr>,
    },
    #[error("cannot connect to {target}: {detail}")]
    Other {
        target: String,
        detail: String,
        #[source]
        source: Box<DbErr>,
    },
    #[error(
        "schema {schema:?} does not exist in {target}: create it (CREATE SCHEMA ...) or fix \
         -s/--database-schema (DATABASE_SCHEMA)"
    )]
    SchemaMissing { schema: String, target: String },
    #[error("cannot look up schema {schema:?} in {target}: {detail}")]
    SchemaLookup {
        schema: String,
        target: String,
        detail: String,
        #[source]
        source: Box<DbErr>,
    },
}

/// A database URL that parsed, with a password-free form for messages.
#[derive(Clone)]
pub struct DatabaseUrl {
    raw: String,
    pub backend: DbBackend,
    /// The URL as [`redact`] shows it: safe to print.
    pub display: String,
    sqlite_file: Option<PathBuf>,
    /// What [`DatabaseUrl::scrub`] removes from messages: the password and the raw userinfo.
    secrets: Vec<String>,
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
    pub fn parse(raw: &str) -> Result<Self, ConnectError> {
        let raw = raw.trim();
        let display = redact(raw);
        let scheme = raw.split_once(':').map(|(s, _)| s).unwrap_or("");
        // Only the scheme is renamed: a user or a database called `mariadb` keeps its name.
        let raw = match scheme {
            "mariadb" => format!("mysql{}", &raw[scheme.len()..]),
            _ => raw.to_owned(),
        };
        let malformed = |err: sqlx::Error| ConnectError::Malformed {
            url: display.clone(),
            detail: first_line(&err.to_string()).to_owned(),
        };
        let mut sqlite_file = None;
        if matches!(scheme, "postgres" | "postgresql" | "mysql" | "mariadb")
            && !has_authority_or_host(raw.split_once(':').map_or("", |(_, rest)| rest))
        {
            return Err(ConnectError::NoAuthority {
                url: display,
                scheme: scheme.to_owned(),
            });
        }
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
                    return Err(ConnectError::NoDatabase { url: display });
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
                return Err(ConnectError::NotADatabaseUrl { url: display });
            }
        };
        let secrets = secrets_of(&raw);
        Ok(Self {
            raw,
            backend,
            display,
            sqlite_file,
            secrets,
        })
    }

    /// `text` (a server's or driver's message) with this URL's password and raw userinfo
    /// replaced: a server may quote any part of what it was sent (a database name that swallowed
    /// the password, a user name), and such a message is appended to ours.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The SQLite file behind the URL, as sqlx reads the URL, if it names one (not `:memory:`).
    pub fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }
}

/// The URL to use: the given one (a flag or DATABASE_URL), else the embedded SQLite file
/// (said on stderr).
pub fn resolve_url(given: Option<&str>) -> Result<DatabaseUrl, ConnectError> {
    match given.map(str::trim).filter(|u| !u.is_empty()) {
        Some(url) => DatabaseUrl::parse(url),
        None => {
            let url = crate::default_database_url();
            eprintln!(
                "DATABASE_URL is not set: using the embedded SQLite database {}",
                crate::default_sqlite_path().display()
            );
            DatabaseUrl::parse(&url)
        }
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

/// `rest` (what follows `scheme:`) has a `//` authority, or names its server in a `host=` or
/// `socket=` parameter. Without either, sqlx connects to its default host and takes the whole
/// tail, password included, as the database name, which the server then prints back.
fn has_authority_or_host(rest: &str) -> bool {
    rest.starts_with("//")
        || rest.split_once('?').is_some_and(|(_, query)| {
            query.split('&').any(|pair| {
                let key = pair.split_once('=').map_or(pair, |(key, _)| key);
                key.eq_ignore_ascii_case("host") || key.eq_ignore_ascii_case("socket")
            })
        })
}

/// The password (as written and percent-decoded), the raw userinfo holding it, and the values
/// of password parameters, longest first so that a longer secret is replaced whole.
fn secrets_of(raw: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let rest = raw.split_once(':').map_or(raw, |(_, rest)| rest);
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let before_query = rest.split_once('?').map_or(rest, |(before, _)| before);
    if let Some((userinfo, _)) = before_query.rsplit_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
    {
        secrets.push(userinfo.to_owned());
        secrets.push(password.to_owned());
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && SECRET_PARAMETERS
                    .iter()
                    .any(|s| key.eq_ignore_ascii_case(s))
            {
                secrets.push(value.to_owned());
            }
        }
    }
    let decoded: Vec<String> = secrets.iter().map(|s| percent_decoded(s)).collect();
    secrets.extend(decoded);
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
    secrets
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// The schema given with `-s`/`DATABASE_SCHEMA`, if any, taken as a literal name: `Bill` is the
/// schema `Bill`, `a,b` the one schema `a,b`. A value wrapped in double quotes is refused rather
/// than guessed at (is `"Bill"` the schema `Bill`, or one whose name has quotes?).
pub fn chosen_schema(given: Option<&str>) -> Result<Option<&str>, ConnectError> {
    let schema = schema_or_unset(given);
    if let Some(name) = schema
        && name.len() >= 2
        && name.starts_with('"')
        && name.ends_with('"')
    {
        return Err(ConnectError::QuotedSchema {
            given: name.to_owned(),
        });
    }
    Ok(schema)
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
) -> Result<DatabaseConnection, ConnectError> {
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
) -> Result<DatabaseConnection, ConnectError> {
    open_inner(
        url,
        schema,
        timeout,
        max_connections,
        Access::ReadWrite,
        tune,
    )
    .await
}

/// [`open`] for commands that only read (`status`, `sql`): nothing is created, neither the
/// SQLite file nor its folder.
pub async fn open_to_read(
    url: &DatabaseUrl,
    schema: Option<&str>,
    timeout: Duration,
    max_connections: u32,
) -> Result<DatabaseConnection, ConnectError> {
    open_inner(
        url,
        schema,
        timeout,
        max_connections,
        Access::ReadOnly,
        |_| {},
    )
    .await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadWrite,
    ReadOnly,
}

async fn open_inner(
    url: &DatabaseUrl,
    schema: Option<&str>,
    timeout: Duration,
    max_connections: u32,
    access: Access,
    tune: impl FnOnce(&mut ConnectOptions),
) -> Result<DatabaseConnection, ConnectError> {
    let schema = chosen_schema(schema)?;
    if access == Access::ReadOnly
        && let Some(file) = url.sqlite_file()
        && !file.exists()
    {
        return Err(ConnectError::SqliteFileMissing {
            file: file.to_path_buf(),
        });
    }
    if let Some(file) = url.sqlite_file().filter(|_| access == Access::ReadWrite) {
        // SQLite creates the file (with mode=rwc) but not the folder it lives in.
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ConnectError::SqliteFolder {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
    }
    let mut options = ConnectOptions::new(url.as_str().to_owned());
    options
        .connect_timeout(timeout)
        .acquire_timeout(timeout)
        .max_connections(max_connections)
        .sqlx_logging(false);
    without_pool_reaper(&mut options);
    // Pinned to exactly one schema, `public` by default, as stock sea-orm-cli does: the
    // server's default `"$user", public` would move unqualified names (SeaORM's
    // `seaql_migrations`) into any schema named after the role. Quoted here so that SeaORM
    // takes the name as it is (it splits unquoted names at commas).
    let schema = schema.unwrap_or(crate::schema::DEFAULT_SCHEMA);
    if url.backend == DbBackend::Postgres {
        options.set_schema_search_path(format!("\"{}\"", schema.replace('"', "\"\"")));
    }
    // MySQL/MariaDB: every connection says `SET NAMES utf8mb4`, whatever `?charset=` the URL
    // has. sqlx does so by default; pinned here so that a URL cannot make an emoji in a
    // device name travel as `?`. The tables name `utf8mb4` too (`Dialect::text_table`).
    if url.backend == DbBackend::MySql {
        options.map_sqlx_mysql_opts(|mysql| mysql.charset("utf8mb4"));
    }
    tune(&mut options);
    let db = Database::connect(options)
        .await
        .map_err(|err| explain_connect_error(url, timeout, err))?;
    if url.backend == DbBackend::Postgres {
        require_schema(&db, url, schema).await?;
    }
    Ok(db)
}

/// Turns off sqlx's idle and lifetime reaping, the pool's only background task (with no
/// `min_connections`). In sqlx 0.9.0 a connection returned to the pool becomes takeable before
/// the pool's idle count is raised, so a sweep that reads the count in that instant reads
/// `usize::MAX` and then takes and returns connections without ever yielding: one core at 100%
/// for good, and on a runtime with few workers, every task behind it stalls (sqlx issue #3645,
/// fixed upstream by PR #4289 after 0.9.0). A test run here hung on it (a SQLite pool of one,
/// 2026-12-03). Without the reaper a connection lives until it fails: sqlx still pings each
/// one as it leaves the pool (`test_before_acquire`, SeaORM's default) and replaces a dead
/// one; PgBouncer or the server can retire idle ones on their side (docs/operations.md, "The
/// connection budget"). Every pool this workspace opens goes through here.
pub fn without_pool_reaper(options: &mut ConnectOptions) {
    options.idle_timeout(None).max_lifetime(None);
}

/// PostgreSQL accepts a `search_path` naming a schema that does not exist (the default
/// `public` too, once dropped); every statement after that would fail with "no schema has been
/// selected to create in". `name` is exactly what went into `search_path`.
async fn require_schema(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    name: &str,
) -> Result<(), ConnectError> {
    // In a transaction: behind a transaction-mode pooler, sqlx's prepare and bind of one
    // statement outside a transaction may reach two different server connections.
    let lookup = async {
        let txn = db.begin().await?;
        let found = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                [name.into()],
            ))
            .await?;
        txn.commit().await?;
        Ok::<_, DbErr>(found)
    };
    let found = lookup.await.map_err(|source| ConnectError::SchemaLookup {
        schema: name.to_owned(),
        target: url.display.clone(),
        detail: url.scrub(&source.to_string()),
        source: Box::new(source),
    })?;
    if found.is_none() {
        return Err(ConnectError::SchemaMissing {
            schema: name.to_owned(),
            target: url.display.clone(),
        });
    }
    Ok(())
}

/// Sorts a connection error by what the user has to fix.
pub fn explain_connect_error(url: &DatabaseUrl, timeout: Duration, err: DbErr) -> ConnectError {
    let target = url.display.clone();
    let sqlx_error = match &err {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(Arc::clone(e)),
        _ => None,
    };
    match sqlx_error.as_deref() {
        Some(sqlx::Error::PoolTimedOut) | Some(sqlx::Error::Io(_)) => ConnectError::Unreachable {
            target,
            waited_secs: timeout.as_secs(),
            source: Box::new(err),
        },
        Some(sqlx::Error::Configuration(e)) => ConnectError::Malformed {
            url: target,
            detail: url.scrub(&e.to_string()),
        },
        Some(sqlx::Error::Database(db)) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let mysql_number = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|e| e.number());
            let detail = url.scrub(db.message());
            match (code.as_str(), mysql_number) {
                ("28P01" | "28000", _) | (_, Some(1045)) => ConnectError::Credentials {
                    target,
                    detail,
                    source: Box::new(err),
                },
                ("3D000", _) | (_, Some(1049)) => ConnectError::DatabaseMissing {
                    target,
                    detail,
                    source: Box::new(err),
                },
                // SQLITE_CANTOPEN
                ("14", _) => ConnectError::SqliteCannotOpen {
                    target,
                    detail,
                    source: Box::new(err),
                },
                _ => ConnectError::Refused {
                    target,
                    detail,
                    source: Box::new(err),
                },
            }
        }
        Some(other) => ConnectError::Other {
            target,
            detail: url.scrub(first_line(&other.to_string())),
            source: Box::new(err),
        },
        None => ConnectError::Other {
            target,
            detail: url.scrub(&err.to_string()),
            source: Box::new(err),
        },
    }
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
            assert!(!failure.to_string().contains("s3cr"), "{failure}");
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
            assert!(
                failure.to_string().contains("names no database"),
                "{failure}"
            );
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
    fn a_url_without_an_authority_is_refused_unless_it_names_a_host() {
        for url in [
            "postgres:u:hunter2@dbhost:5432/db",
            "postgresql:u:hunter2@dbhost/db",
            "mysql:u:hunter2@127.0.0.1:1/db",
            "mariadb:u:hunter2@h/db",
        ] {
            let Err(failure) = DatabaseUrl::parse(url) else {
                panic!("{url} parsed");
            };
            assert!(failure.to_string().contains("has no `//`"), "{failure}");
            assert!(!failure.to_string().contains("hunter2"), "{failure}");
        }
        assert!(DatabaseUrl::parse("postgres:db?host=/var/run/postgresql").is_ok());
        assert!(DatabaseUrl::parse("mysql:db?socket=/run/mysqld/mysqld.sock").is_ok());
    }

    #[test]
    fn scrub_removes_the_password_and_the_userinfo() {
        for (url, message) in [
            (
                "postgres:u:hunter2@dbhost?host=h",
                r#"database "u:hunter2@dbhost" does not exist"#,
            ),
            (
                "postgres://u:p%40hunter2@h/db",
                "password p@hunter2 rejected",
            ),
            (
                "postgres://u:p%40hunter2@h/db",
                "password p%40hunter2 rejected",
            ),
            ("postgres://u@h/db?password=hunter2", "hunter2 rejected"),
            (
                "mysql://root:s3cr/hunter2@h:1/db",
                "Unknown database 's3cr/hunter2'",
            ),
        ] {
            let Ok(parsed) = DatabaseUrl::parse(url) else {
                // A URL that does not parse is never sent to a server.
                continue;
            };
            let scrubbed = parsed.scrub(message);
            assert!(!scrubbed.contains("hunter2"), "{url}: {scrubbed}");
        }
        let parsed = DatabaseUrl::parse("postgres://app@h/db").unwrap();
        assert_eq!(parsed.scrub("role app is fine"), "role app is fine");
    }

    #[test]
    fn a_quoted_schema_is_refused() {
        assert!(matches!(
            chosen_schema(Some("\"Bill\"")),
            Err(ConnectError::QuotedSchema { .. })
        ));
        assert_eq!(chosen_schema(Some("Bill")).ok(), Some(Some("Bill")));
        assert_eq!(
            chosen_schema(Some("Odd \"Sch,ema")).ok(),
            Some(Some("Odd \"Sch,ema"))
        );
        assert_eq!(chosen_schema(Some(" ")).ok(), Some(None));
    }

    /// The pool comes without sqlx's reaper, whose sweep can spin forever in sqlx 0.9.0
    /// ([`without_pool_reaper`]): with neither bound set, sqlx starts no sweep at all.
    #[async_std::test]
    async fn pools_open_without_the_idle_and_lifetime_reaper() {
        let url = DatabaseUrl::parse("sqlite::memory:").unwrap();
        let db = open(&url, None, Duration::from_secs(5), 1).await.unwrap();
        let pool = db.get_sqlite_connection_pool().options();
        assert_eq!(pool.get_idle_timeout(), None);
        assert_eq!(pool.get_max_lifetime(), None);
    }

    #[test]
    fn an_empty_schema_is_unset() {
        assert_eq!(schema_or_unset(None), None);
        assert_eq!(schema_or_unset(Some("")), None);
        assert_eq!(schema_or_unset(Some("  ")), None);
        assert_eq!(schema_or_unset(Some("billing")), Some("billing"));
    }
}
