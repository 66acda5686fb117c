//! Refusing a transaction-mode pooler before taking the migration lock.
//!
//! The lock is PostgreSQL's session-level advisory lock, and the migrations rely on it for as
//! long as they run. A pooler in transaction mode (PgBouncer `pool_mode = transaction`,
//! Supavisor, RDS Proxy) lends each client a server connection for one transaction at a time:
//! the lock would be taken on one server session and checked, or released, on another, while
//! the session holding it serves other clients. It would mean nothing, so the migrator wants
//! a direct connection (`MIGRATION_DATABASE_URL`) and says so in one line when it gets a pooler.
//!
//! How it tells: one client connection's backend must stay the same across transactions, and
//! no other client connection may be given it. A pooler left idle lends the server connection
//! it got back last (PgBouncer's default), so the second connection's transaction, opened
//! right after the first connection's, lands on the first one's backend; and while that
//! transaction holds it, the first connection's next statement lands elsewhere. Each round
//! would catch either. Three rounds once missed a pool whose three server connections were
//! busy with parallel tests (a local run, 2026-12-04); twenty cost a few milliseconds more,
//! and a pooler that still slips through is named by its first unknown prepared statement
//! ([`Error::scrubbed`]). Only simple
//! queries are sent: behind such a pooler, a prepared statement may not survive to be bound.

use sea_orm_migration::sea_orm::sqlx::{self, Connection, PgConnection, Row};

use crate::connect::DatabaseUrl;
use crate::error::Error;

const ROUNDS: usize = 20;

/// Errs with [`Error::TransactionPooler`] when `url` (PostgreSQL) leads to a pooler that
/// moves a client connection between server sessions.
pub async fn refuse_transaction_pooler(url: &DatabaseUrl) -> Result<(), Error> {
    let failed = |source: sqlx::Error| Error::LockConnection {
        doing: "check for a pooler on",
        target: url.display.clone(),
        detail: url.scrub(&source.to_string()),
        source,
    };
    let mut first = PgConnection::connect(url.as_str()).await.map_err(failed)?;
    let mut second = PgConnection::connect(url.as_str()).await.map_err(failed)?;
    let mut moved = false;
    for _ in 0..ROUNDS {
        let before = backend_pid(&mut first).await.map_err(failed)?;
        sqlx::raw_sql("BEGIN")
            .execute(&mut second)
            .await
            .map_err(failed)?;
        let other = backend_pid(&mut second).await.map_err(failed)?;
        let after = backend_pid(&mut first).await.map_err(failed)?;
        sqlx::raw_sql("COMMIT")
            .execute(&mut second)
            .await
            .map_err(failed)?;
        if other == before || after != before {
            moved = true;
            break;
        }
    }
    let _ = first.close().await;
    let _ = second.close().await;
    if moved {
        return Err(Error::TransactionPooler {
            target: url.display.clone(),
        });
    }
    Ok(())
}

async fn backend_pid(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    let row = sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await?;
    row.try_get(0)
}
