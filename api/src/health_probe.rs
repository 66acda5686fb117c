//! `/healthz`'s own database connection, outside the pool. It lives in the application state,
//! so it is kept apart from the route that uses it.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::{self, Connection};
use sea_orm::{DatabaseConnection, DbBackend};
use tokio::sync::Mutex as AsyncMutex;

/// How long the check waits for the database before calling it unreachable.
pub const PING_WAIT: Duration = Duration::from_secs(2);

/// One connection of the health check's own, outside the pool, opened the first time the
/// pool is found exhausted and kept for the next time. It is dropped when a ping on it fails
/// or times out (a connection cut mid-ping cannot be reused), and a stale one (closed by the
/// server or a proxy while idle) is replaced once before the database is called down.
#[derive(Clone, Default)]
pub struct HealthProbe(Arc<AsyncMutex<Option<ProbeConnection>>>);

enum ProbeConnection {
    Postgres(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
}

impl ProbeConnection {
    /// With the pool's options: same server, user, TLS and session settings.
    async fn open(db: &DatabaseConnection) -> Result<Self, String> {
        match db.get_database_backend() {
            DbBackend::Postgres => {
                let options = db.get_postgres_connection_pool().connect_options();
                sqlx::PgConnection::connect_with(&options)
                    .await
                    .map(Self::Postgres)
                    .map_err(|e| e.to_string())
            }
            DbBackend::MySql => {
                let options = db.get_mysql_connection_pool().connect_options();
                sqlx::MySqlConnection::connect_with(&options)
                    .await
                    .map(Self::MySql)
                    .map_err(|e| e.to_string())
            }
            _ => Err("no probe connection on SQLite".to_owned()),
        }
    }

    async fn ping(&mut self) -> Result<(), String> {
        match self {
            Self::Postgres(conn) => conn.ping().await,
            Self::MySql(conn) => conn.ping().await,
        }
        .map_err(|e| e.to_string())
    }
}

impl HealthProbe {
    /// Whether the database answers a round trip on the probe's connection within
    /// [`PING_WAIT`].
    pub async fn ping(&self, db: &DatabaseConnection) -> Result<(), String> {
        // Another check still waiting on the probe means the database is not answering.
        let Ok(mut slot) = tokio::time::timeout(PING_WAIT, self.0.lock()).await else {
            return Err("an earlier health check is still waiting for the database".to_owned());
        };
        let attempt = tokio::time::timeout(PING_WAIT, async {
            if let Some(conn) = slot.as_mut() {
                if conn.ping().await.is_ok() {
                    return Ok(());
                }
                *slot = None;
            }
            // Opening a connection is itself a round trip with the server.
            *slot = Some(ProbeConnection::open(db).await?);
            Ok(())
        })
        .await;
        match attempt {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => {
                *slot = None;
                Err(reason)
            }
            Err(_) => {
                *slot = None;
                Err(format!("no answer within {PING_WAIT:?}"))
            }
        }
    }
}
