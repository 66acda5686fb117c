use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, FixedOffset, Utc};
use entity::synced_sessions;
use sea_orm::TransactionTrait;
use serde::Serialize;

use crate::auth::CurrentUser;
use crate::domain::{self, ClientId, Page, PageQuery, SessionInput, SyncRequest};
use crate::error::ApiError;
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::service::sessions::{self as service, Listing, Synced};
use crate::state::AppState;

#[derive(Serialize)]
pub struct SessionResponse {
    pub client_id: String,
    pub device_name: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
    pub deleted_at: Option<DateTime<FixedOffset>>,
    /// For a deleted session: when it is purged for good.
    pub purge_after: Option<DateTime<FixedOffset>>,
}

#[derive(Serialize)]
pub struct SessionPage {
    pub items: Vec<SessionResponse>,
    pub next_cursor: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions", get(list))
        .route(
            "/v1/sessions/{client_id}",
            get(get_one).put(sync).delete(soft_delete),
        )
        .route("/v1/sessions/{client_id}/restore", post(restore))
        .route("/v1/trash", get(trash))
}

fn respond(
    session: synced_sessions::Model,
    purge_after: Option<DateTime<FixedOffset>>,
) -> SessionResponse {
    let payload = serde_json::from_str(&session.payload).unwrap_or_else(|err| {
        // Only this API writes payloads, always as JSON; say so loudly if that ever breaks.
        tracing::error!(error = %err, session = session.id, "stored payload is not JSON");
        serde_json::Value::String(session.payload.clone())
    });
    SessionResponse {
        client_id: session.client_id,
        device_name: session.device_name,
        payload,
        created_at: session.created_at,
        updated_at: session.updated_at,
        deleted_at: session.deleted_at,
        purge_after,
    }
}

#[tracing::instrument(skip_all, fields(user_id = user.id, client_id = ?client_id))]
async fn sync(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(client_id): ApiPath<String>,
    ApiJson(request): ApiJson<SyncRequest>,
) -> Result<(StatusCode, Json<SessionResponse>), ApiError> {
    let id = ClientId::parse(&client_id)?;
    let capacity = domain::payload_capacity(state.db.get_database_backend());
    let input = SessionInput::parse(request, capacity)?;
    let _turn = state.user_queue.turn(user.id, state.lock_timeout).await?;
    let txn = state.db.begin().await?;
    let outcome = service::sync(&txn, user.id, &state.limits, &id, input, Utc::now()).await?;
    txn.commit().await?;
    Ok(match outcome {
        Synced::Created(s) => (StatusCode::CREATED, Json(respond(s, None))),
        Synced::Updated(s) => (StatusCode::OK, Json(respond(s, None))),
    })
}

#[tracing::instrument(skip_all, fields(user_id = user.id, client_id = ?client_id))]
async fn get_one(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Json<SessionResponse>, ApiError> {
    let id = ClientId::parse(&client_id)?;
    let session = service::get(&state.db, user.id, &id).await?;
    Ok(Json(respond(session, None)))
}

#[tracing::instrument(skip_all, fields(user_id = user.id))]
async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<SessionPage>, ApiError> {
    let page = Page::parse(&query, state.limits.max_page_size)?;
    let (rows, next) = service::list(&state.db, user.id, &page, Listing::Live).await?;
    Ok(Json(SessionPage {
        items: rows.into_iter().map(|s| respond(s, None)).collect(),
        next_cursor: next.map(|id| id.to_string()),
    }))
}

#[tracing::instrument(skip_all, fields(user_id = user.id))]
async fn trash(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<SessionPage>, ApiError> {
    let page = Page::parse(&query, state.limits.max_page_size)?;
    let now = Utc::now();
    let tier = service::retention_tier(&state.db, &user, now).await?;
    let listing = Listing::trash(tier, &state.limits, now);
    let (rows, next) = service::list(&state.db, user.id, &page, listing).await?;
    Ok(Json(SessionPage {
        items: rows
            .into_iter()
            .map(|s| {
                let purge = s
                    .deleted_at
                    .map(|at| service::purge_after(at, tier, &state.limits));
                respond(s, purge)
            })
            .collect(),
        next_cursor: next.map(|id| id.to_string()),
    }))
}

#[tracing::instrument(skip_all, fields(user_id = user.id, client_id = ?client_id))]
async fn soft_delete(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(client_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = ClientId::parse(&client_id)?;
    let _turn = state.user_queue.turn(user.id, state.lock_timeout).await?;
    let txn = state.db.begin().await?;
    service::soft_delete(&txn, user.id, &id, Utc::now()).await?;
    txn.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[tracing::instrument(skip_all, fields(user_id = user.id, client_id = ?client_id))]
async fn restore(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Json<SessionResponse>, ApiError> {
    let id = ClientId::parse(&client_id)?;
    let _turn = state.user_queue.turn(user.id, state.lock_timeout).await?;
    let txn = state.db.begin().await?;
    let session = service::restore(&txn, user.id, &state.limits, &id, Utc::now()).await?;
    txn.commit().await?;
    Ok(Json(respond(session, None)))
}
