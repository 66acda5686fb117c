use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::{DatabaseConnection, DbBackend};
use serde::Serialize;

use crate::startup::AppState;

#[derive(Serialize)]
struct Health {
    status: &'static str,
    database: &'static str,
}

/// How long the check waits for the database before calling it unreachable.
const PING_WAIT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(health))
}

/// 200 `reachable` when the database answers; 200 `busy` when every pooled connection is in
/// use (the database answered them; taking this instance out of service would only move its
/// load onto the others, which share the database); 503 `unreachable` when it does not answer.
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let answer = |status, database| {
        (
            status,
            Json(Health {
                status: if status == StatusCode::OK {
                    "ok"
                } else {
                    "unavailable"
                },
                database,
            }),
        )
    };
    // A ping would queue behind the requests holding every connection.
    if pool_exhausted(&state.db) {
        return answer(StatusCode::OK, "busy");
    }
    match tokio::time::timeout(PING_WAIT, state.db.ping()).await {
        Ok(Ok(())) => answer(StatusCode::OK, "reachable"),
        // Requests took the last connections while we waited.
        _ if pool_exhausted(&state.db) => answer(StatusCode::OK, "busy"),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health check: database unreachable");
            answer(StatusCode::SERVICE_UNAVAILABLE, "unreachable")
        }
        Err(_) => {
            tracing::warn!(wait = ?PING_WAIT, "health check: the database did not answer in time");
            answer(StatusCode::SERVICE_UNAVAILABLE, "unreachable")
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
