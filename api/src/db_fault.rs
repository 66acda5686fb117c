//! Which database errors mean "try again later" rather than "our bug": answered 503 with
//! Retry-After (never 500), so clients and load balancers retry or move on.
//!
//! Reproduced before this: a PostgreSQL fast restart or immediate stop, a MariaDB `kill -9`
//! under load, and a database turned read-only (a failover onto a replica,
//! `default_transaction_read_only`) all answered 500 `internal`.

use sea_orm::sqlx::mysql::MySqlDatabaseError;
use sea_orm::{DbErr, RuntimeErr, sqlx};

/// A fault of the database or of the way to it, by what the client should make of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A lock wait ran out, a deadlock, a serialization failure: another transaction holds
    /// what this one needs.
    LockConflict,
    /// The database refuses writes: a replica after a failover, or read-only by setting.
    ReadOnly,
    /// The connection broke, the server is shutting down or starting, refuses more clients,
    /// or no pooled connection came free in time.
    Unavailable,
}

impl Fault {
    /// `None`: not a fault of the database's availability.
    pub fn of(err: &DbErr) -> Option<Self> {
        if migration::step::is_lock_conflict(err) {
            return Some(Self::LockConflict);
        }
        let sqlx = match err {
            DbErr::ConnectionAcquire(_) => return Some(Self::Unavailable),
            DbErr::Conn(RuntimeErr::SqlxError(e))
            | DbErr::Exec(RuntimeErr::SqlxError(e))
            | DbErr::Query(RuntimeErr::SqlxError(e)) => e.as_ref(),
            DbErr::Conn(_) => return Some(Self::Unavailable),
            _ => return None,
        };
        match sqlx {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Some(Self::Unavailable),
            sqlx::Error::Database(db) => match db.try_downcast_ref::<MySqlDatabaseError>() {
                Some(mysql) => mysql_fault(mysql.number()),
                None => db.code().as_deref().and_then(postgres_fault),
            },
            _ => None,
        }
    }
}

/// PostgreSQL SQLSTATEs: `25006` read_only_sql_transaction; class `08` connection exception;
/// `57P01` admin_shutdown (fast stop, `pg_terminate_backend`), `57P02` crash_shutdown,
/// `57P03` cannot_connect_now (starting up, shutting down, in recovery); class `53`
/// insufficient resources (`53300` too_many_connections, `53100` disk full, `53200` out of
/// memory). SQLite's codes are numbers without letters and match none of these.
fn postgres_fault(code: &str) -> Option<Fault> {
    match code {
        "25006" => Some(Fault::ReadOnly),
        "57P01" | "57P02" | "57P03" => Some(Fault::Unavailable),
        _ if code.starts_with("08") || code.starts_with("53") => Some(Fault::Unavailable),
        _ => None,
    }
}

/// MySQL/MariaDB error numbers: 1290 (`--read-only`: the option that prevents the statement;
/// the API runs no statement another option could stop) and 1836 (read-only mode); 1040 too
/// many connections, 1053 server shutdown, 1927 connection killed, 2006 server gone away,
/// 2013 connection lost, 1203 user has too many connections.
fn mysql_fault(number: u16) -> Option<Fault> {
    match number {
        1290 | 1836 => Some(Fault::ReadOnly),
        1040 | 1053 | 1203 | 1927 | 2006 | 2013 => Some(Fault::Unavailable),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_codes() {
        assert_eq!(postgres_fault("25006"), Some(Fault::ReadOnly));
        for code in ["57P01", "57P03", "08006", "08003", "53300"] {
            assert_eq!(postgres_fault(code), Some(Fault::Unavailable), "{code}");
        }
        for code in ["23505", "42P01", "5", "2067"] {
            assert_eq!(postgres_fault(code), None, "{code}");
        }
    }

    #[test]
    fn pool_and_io_errors_are_unavailable() {
        let acquire = DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        assert_eq!(Fault::of(&acquire), Some(Fault::Unavailable));
        let io = DbErr::Exec(RuntimeErr::SqlxError(std::sync::Arc::new(sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        ))));
        assert_eq!(Fault::of(&io), Some(Fault::Unavailable));
        assert_eq!(Fault::of(&DbErr::Custom("bug".into())), None);
    }
}
