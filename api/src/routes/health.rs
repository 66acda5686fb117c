use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::health_probe::PING_WAIT;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: Status,
    pub database: Database,
}

#[derive(Serialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Unavailable,
}

#[derive(Serialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Database {
    Reachable,
    Busy,
    Unreachable,
    /// Answers, but accepts no writes (a replica after a failover, `default_transaction_read_only`,
    /// MariaDB's `read_only`): drain this instance, as writes would answer 503.
    ReadOnly,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

#[utoipa::path(
    get, path = "/healthz", tag = "health",
    responses(
        (status = 200, description = "the database answers (`reachable`), or every pooled connection is in use (`busy`)", body = Health),
        (status = 503, description = "the database does not answer (`unreachable`), or answers but accepts no writes (`read_only`)", body = Health),
    )
)]
/// Database reachability.
///
/// 200 `reachable` when the database answers a ping on the pool.
///
/// 200 `busy` when every pooled connection is in use *and* the database answers a ping on the
/// probe's own connection, outside the pool: taking this instance out of service would only
/// move its load onto the others, which share the database.
///
/// 503 `read_only` when it answers but accepts no writes (every write would answer 503).
///
/// 503 `unreachable` when it does not answer within `PING_WAIT` (2 s, each way). A busy pool
/// alone proves nothing: when the database stops answering, the requests that keep coming
/// hold every connection while they wait for it.
///
/// SQLite is a local file behind one connection: a busy pool there is reported `busy`.
#[tracing::instrument(skip_all)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    // A ping on the pool would queue behind the requests holding every connection.
    if pool_exhausted(state.db.pool()) {
        return busy_or_down(&state).await;
    }
    match tokio::time::timeout(PING_WAIT, accepts_writes(&state.db)).await {
        Ok(Ok(true)) => answer(StatusCode::OK, Database::Reachable),
        Ok(Ok(false)) => {
            tracing::warn!("health check: the database is read-only");
            answer(StatusCode::SERVICE_UNAVAILABLE, Database::ReadOnly)
        }
        // Requests took the last connections while we waited.
        _ if pool_exhausted(state.db.pool()) => busy_or_down(&state).await,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health check: database unreachable");
            answer(StatusCode::SERVICE_UNAVAILABLE, Database::Unreachable)
        }
        Err(_) => {
            tracing::warn!(wait = ?PING_WAIT, "health check: the database did not answer in time");
            answer(StatusCode::SERVICE_UNAVAILABLE, Database::Unreachable)
        }
    }
}

/// One round trip, as a ping, that also asks whether a write would be refused: PostgreSQL's
/// `transaction_read_only` (on a standby, or under `default_transaction_read_only`), MySQL's
/// and MariaDB's global `read_only` / `innodb_read_only`. SQLite: a ping.
async fn accepts_writes(db: &crate::db::Db) -> Result<bool, sea_orm::DbErr> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => "SELECT current_setting('transaction_read_only')",
        DbBackend::MySql => {
            "SELECT IF(@@global.read_only OR @@global.innodb_read_only, 'on', 'off')"
        }
        _ => return db.pool().ping().await.map(|()| true),
    };
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    let read_only = match row {
        Some(row) => row.try_get_by_index::<String>(0)? == "on",
        None => false,
    };
    Ok(!read_only)
}

fn answer(status: StatusCode, database: Database) -> (StatusCode, Json<Health>) {
    (
        status,
        Json(Health {
            status: if status == StatusCode::OK {
                Status::Ok
            } else {
                Status::Unavailable
            },
            database,
        }),
    )
}

/// The pool is exhausted: `busy` only if the database answers the probe.
async fn busy_or_down(state: &AppState) -> (StatusCode, Json<Health>) {
    if state.db.get_database_backend() == DbBackend::Sqlite {
        return answer(StatusCode::OK, Database::Busy);
    }
    match state.health_probe.ping(state.db.pool()).await {
        Ok(()) => answer(StatusCode::OK, Database::Busy),
        Err(reason) => {
            tracing::warn!(%reason, "health check: every pooled connection is in use and the database does not answer");
            answer(StatusCode::SERVICE_UNAVAILABLE, Database::Unreachable)
        }
    }
}

/// Whether the pool is at its size limit with no idle connection.
fn pool_exhausted(db: &DatabaseConnection) -> bool {
    fn exhausted<DB: sea_orm::sqlx::Database>(pool: &sea_orm::sqlx::Pool<DB>) -> bool {
        pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections()
    }
    match db.get_database_backend() {
        DbBackend::Postgres => exhausted(db.get_postgres_connection_pool()),
        DbBackend::MySql => exhausted(db.get_mysql_connection_pool()),
        _ => exhausted(db.get_sqlite_connection_pool()),
    }
}
