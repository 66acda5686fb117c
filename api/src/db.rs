//! The API's handle on its database, and how the session settings the API relies on reach
//! every statement it runs.
//!
//! On a direct connection the settings travel once, when a connection opens (`startup`'s
//! `bound_lock_waits`). Behind a transaction-mode pooler (PgBouncer `pool_mode = transaction`,
//! Supavisor, RDS Proxy) a client connection is lent a server connection for one transaction
//! at a time, so nothing set on "the session" is known to hold for the next statement:
//! PgBouncer refuses the `options` startup parameter outright, and with
//! `ignore_startup_parameters = options` drops it without a word. [`Db`] then runs every
//! statement inside a transaction that starts with `SET LOCAL lock_timeout`; the setting
//! lives exactly as long as the server connection is ours.
//!
//! That every statement runs in a transaction matters twice over behind PgBouncer 1.18: sqlx
//! (as SeaORM drives it) prepares a *named* statement (`sqlx_s_N`) with one Sync and binds it
//! with another, and a transaction-mode pooler may hand those two halves to different server
//! connections ("prepared statement "sqlx_s_3" does not exist"). Inside a transaction both
//! halves reach the same server connection. docs/operations.md records what was measured.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, Statement, TransactionOptions, TransactionTrait,
};

/// What stands between the API and PostgreSQL (`DB_POOLER`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooler {
    /// Nothing, or a pooler in session mode: one server connection per client connection.
    #[default]
    None,
    /// A pooler lending server connections per transaction (PgBouncer `pool_mode =
    /// transaction`): settings are made per transaction, and the statement cache is off.
    Transaction,
}

/// The pool, and the statement each transaction must start with, if any.
#[derive(Clone, Debug)]
pub struct Db {
    pool: DatabaseConnection,
    /// Set behind a transaction-mode pooler: every statement then runs in a transaction that
    /// starts with this.
    per_transaction: Option<Arc<str>>,
}

impl Db {
    /// Statements on `pool` rely on its connections' own session settings.
    pub fn direct(pool: DatabaseConnection) -> Self {
        Self {
            pool,
            per_transaction: None,
        }
    }

    /// Every statement on `pool` runs in a transaction bounding its lock waits by
    /// `lock_timeout`, with `schema` first on its `search_path` (PostgreSQL only: the one
    /// backend reached through such poolers here). The pool's own `SET search_path` on connect
    /// reaches one server connection only.
    pub fn per_transaction(pool: DatabaseConnection, lock_timeout: Duration, schema: &str) -> Self {
        let sql = format!(
            "SET LOCAL lock_timeout = {}; SET LOCAL search_path = \"{}\"",
            lock_timeout.as_millis(),
            schema.replace('"', "\"\"")
        );
        Self {
            pool,
            per_transaction: Some(sql.into()),
        }
    }

    /// The pool itself: for its statistics, a ping, closing it. Statements go through [`Db`].
    pub fn pool(&self) -> &DatabaseConnection {
        &self.pool
    }

    pub fn get_database_backend(&self) -> DbBackend {
        self.pool.get_database_backend()
    }

    pub async fn close(self) -> Result<(), DbErr> {
        self.pool.close().await
    }

    pub async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.begin_with_options(TransactionOptions::default()).await
    }

    /// A transaction with the session settings in force.
    pub async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<DatabaseTransaction, DbErr> {
        let asked = std::time::Instant::now();
        let txn = self.pool.begin_with_options(options).await?;
        crate::metrics::begin_waited(asked.elapsed());
        if let Some(sql) = &self.per_transaction
            && let Err(err) = txn.execute_unprepared(sql).await
        {
            let _ = txn.rollback().await;
            return Err(err);
        }
        Ok(txn)
    }

    /// `lock_timeout` as the statements on this handle see it, in milliseconds (PostgreSQL).
    /// Read in a transaction whatever the mode: a pooler that dropped the startup options
    /// may also split a prepared statement from its bind outside one, and the answer wanted
    /// then is "0", not that error.
    pub async fn lock_timeout_in_force(&self) -> Result<Option<u64>, DbErr> {
        let sql = "SELECT setting FROM pg_settings WHERE name = 'lock_timeout'";
        let txn = self.begin().await?;
        let row = txn
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await;
        let row = finish(txn, row).await?;
        let Some(row) = row else { return Ok(None) };
        let setting: String = row.try_get_by_index(0)?;
        Ok(setting.parse().ok())
    }
}

/// Commits `txn` after `result`, or rolls it back.
async fn finish<T>(txn: DatabaseTransaction, result: Result<T, DbErr>) -> Result<T, DbErr> {
    match result {
        Ok(value) => txn.commit().await.map(|()| value),
        Err(err) => {
            // Best effort: the error that matters is `err`.
            let _ = txn.rollback().await;
            Err(err)
        }
    }
}

/// `$call` on `$db`'s pool (bound as `$conn`), or behind a transaction-mode pooler in a
/// transaction of its own with the settings in force. A macro: the four methods differ in
/// their call and result type only, and a closure returning a future that borrows its
/// argument cannot be named in a stable signature.
macro_rules! per_statement {
    ($db:expr, |$conn:ident| $call:expr) => {{
        if $db.per_transaction.is_none() {
            let $conn = &$db.pool;
            $call.await
        } else {
            let txn = $db.begin().await?;
            let result = {
                let $conn = &txn;
                $call.await
            };
            finish(txn, result).await
        }
    }};
}

#[async_trait::async_trait]
impl ConnectionTrait for Db {
    fn get_database_backend(&self) -> DbBackend {
        self.pool.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        per_statement!(self, |conn| conn.execute_raw(stmt))
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        per_statement!(self, |conn| conn.execute_unprepared(sql))
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        per_statement!(self, |conn| conn.query_one_raw(stmt))
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        per_statement!(self, |conn| conn.query_all_raw(stmt))
    }
}
