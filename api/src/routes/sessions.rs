use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, FixedOffset, Utc};
use entity::synced_sessions;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::CurrentUser;
use crate::domain::{self, ClientId, Page, PageQuery, SessionInput, SyncRequest};
use crate::error::{ApiError, ErrorBody};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::service::sessions::{self as service, Listing, Synced};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
#[schema(as = Session)]
pub struct SessionResponse {
    pub client_id: String,
    pub device_name: String,
    /// The JSON value last synced, exactly as it was sent.
    #[schema(value_type = Value)]
    pub payload: Box<RawValue>,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
    #[schema(required = true)]
    pub deleted_at: Option<DateTime<FixedOffset>>,
    /// In the trash listing: when the session is purged for good; null elsewhere.
    #[schema(required = true)]
    pub purge_after: Option<DateTime<FixedOffset>>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionPage {
    pub items: Vec<SessionResponse>,
    /// Give it as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `/v1/sessions/{client_id}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionPath {
    /// Client-chosen session id: 1-100 of A-Z a-z 0-9 _ - . :
    // Not `.` or `..`: at least one character other than a dot, or three dots or more.
    #[param(
        min_length = 1,
        max_length = 100,
        pattern = "^([A-Za-z0-9_.:-]*[A-Za-z0-9_:-][A-Za-z0-9_.:-]*|[.]{3,})$"
    )]
    pub client_id: String,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one, sync, soft_delete))
        .routes(routes!(restore))
        .routes(routes!(trash))
}

fn respond(
    session: synced_sessions::Model,
    purge_after: Option<DateTime<FixedOffset>>,
) -> SessionResponse {
    let payload = stored_payload(session.id, session.payload);
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

/// The stored payload text as the JSON it is, written out verbatim.
fn stored_payload(session_id: i64, text: String) -> Box<RawValue> {
    if let Err(err) = serde_json::from_str::<&RawValue>(&text) {
        // Only this API writes payloads, always JSON; say so loudly if that ever breaks.
        tracing::error!(error = %err, session = session_id, "stored payload is not JSON");
        return serde_json::value::to_raw_value(&text).unwrap_or_default();
    }
    RawValue::from_string(text).unwrap_or_default()
}

/// Create or update (sync) a session by its client id.
#[utoipa::path(
    put, path = "/v1/sessions/{client_id}", tag = "sessions",
    params(SessionPath), request_body = SyncRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "updated", body = SessionResponse),
        (status = 201, description = "created (also over a trashed session past its retention window)", body = SessionResponse),
        (status = 400, description = "malformed JSON, or client_id is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 402, description = "a new session, and the Free plan's session limit is reached (`tier_limit_reached`)", body = ErrorBody),
        (status = 409, description = "the session is in the trash, inside its retention window: restore it first (`session_deleted`)", body = ErrorBody),
        (status = 413, description = "body larger than MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "`field` names what is wrong: a field missing, unknown or of the wrong type; device_name only spaces, longer than 255 characters or with a control character; client_id not 1-100 of A-Z a-z 0-9 _ - . :; payload longer than its column holds", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = user.id, client_id = ?client_id))]
async fn sync(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(SessionPath { client_id }): ApiPath<SessionPath>,
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

/// One live session.
#[utoipa::path(
    get, path = "/v1/sessions/{client_id}", tag = "sessions",
    params(SessionPath), security(("bearer" = [])),
    responses(
        (status = 200, description = "the session", body = SessionResponse),
        (status = 400, description = "client_id is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 404, description = "no such live session for this user", body = ErrorBody),
        (status = 422, description = "client_id is not 1-100 of A-Z a-z 0-9 _ - . :", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = user.id, client_id = ?client_id))]
async fn get_one(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(SessionPath { client_id }): ApiPath<SessionPath>,
) -> Result<Json<SessionResponse>, ApiError> {
    let id = ClientId::parse(&client_id)?;
    let session = service::get(&state.db, user.id, &id).await?;
    Ok(Json(respond(session, None)))
}

/// Live synced sessions, newest first.
#[utoipa::path(
    get, path = "/v1/sessions", tag = "sessions",
    params(PageQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "one page", body = SessionPage),
        (status = 400, description = "a query string that does not parse (e.g. a parameter given twice)", body = ErrorBody),
        (status = 422, description = "limit outside 1..MAX_PAGE_SIZE, or a cursor that is not digits", body = ErrorBody),
    )
)]
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

/// Soft-deleted sessions still inside the retention window, newest first, with their purge
/// time.
#[utoipa::path(
    get, path = "/v1/trash", tag = "sessions",
    params(PageQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "one page", body = SessionPage),
        (status = 400, description = "a query string that does not parse (e.g. a parameter given twice)", body = ErrorBody),
        (status = 422, description = "limit outside 1..MAX_PAGE_SIZE, or a cursor that is not digits", body = ErrorBody),
    )
)]
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

/// Soft delete (move to the trash); repeating it is fine.
#[utoipa::path(
    delete, path = "/v1/sessions/{client_id}", tag = "sessions",
    params(SessionPath), security(("bearer" = [])),
    responses(
        (status = 204, description = "in the trash"),
        (status = 400, description = "client_id is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 404, description = "no such session for this user", body = ErrorBody),
        (status = 422, description = "client_id is not 1-100 of A-Z a-z 0-9 _ - . :", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = user.id, client_id = ?client_id))]
async fn soft_delete(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(SessionPath { client_id }): ApiPath<SessionPath>,
) -> Result<StatusCode, ApiError> {
    let id = ClientId::parse(&client_id)?;
    let _turn = state.user_queue.turn(user.id, state.lock_timeout).await?;
    let txn = state.db.begin().await?;
    service::soft_delete(&txn, user.id, &id, Utc::now()).await?;
    txn.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Restore from the trash within the retention window.
#[utoipa::path(
    post, path = "/v1/sessions/{client_id}/restore", tag = "sessions",
    params(SessionPath), security(("bearer" = [])),
    responses(
        (status = 200, description = "restored (or was not deleted)", body = SessionResponse),
        (status = 400, description = "client_id is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 402, description = "the Free plan's session limit is reached (`tier_limit_reached`)", body = ErrorBody),
        (status = 404, description = "no such session for this user, or deleted longer ago than the plan's retention window (purged or not yet)", body = ErrorBody),
        (status = 422, description = "client_id is not 1-100 of A-Z a-z 0-9 _ - . :", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = user.id, client_id = ?client_id))]
async fn restore(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(SessionPath { client_id }): ApiPath<SessionPath>,
) -> Result<Json<SessionResponse>, ApiError> {
    let id = ClientId::parse(&client_id)?;
    let _turn = state.user_queue.turn(user.id, state.lock_timeout).await?;
    let txn = state.db.begin().await?;
    let session = service::restore(&txn, user.id, &state.limits, &id, Utc::now()).await?;
    txn.commit().await?;
    Ok(Json(respond(session, None)))
}
