//! One error type for the whole API, one JSON shape for every error:
//! `{"error": {"code": "...", "message": "...", "field": "..."?}}`.
//!
//! `code` is stable and meant for machines; `message` is for people. Database and unexpected
//! errors are logged with their context and answered as an opaque 500. What is worth retrying
//! (an unreachable or busy database, a lock wait or request that ran out of time) is a 503
//! with `Retry-After`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sea_orm::DbErr;
use serde::Serialize;
use utoipa::ToSchema;

use crate::db_fault::Fault;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("this route does not accept that method; see the Allow header")]
    MethodNotAllowed,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body did not arrive in time (BODY_READ_TIMEOUT_SECS); send it at once")]
    BodyTimedOut,
    #[error("request body is larger than this server accepts (MAX_BODY_BYTES)")]
    PayloadTooLarge,
    #[error(
        "too many failed bearer tokens from this address (UNKNOWN_TOKENS_PER_PEER); retry after Retry-After seconds"
    )]
    TooManyUnknownTokens { retry_after_secs: u64 },
    #[error(
        "this token sent more requests than TOKEN_REQUESTS_PER_SEC a second; retry after Retry-After seconds"
    )]
    RateLimited { retry_after_secs: u64 },
    #[error("{message}")]
    PaymentRequired { message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    NotConfigured(&'static str),
    #[error("the database is unavailable; retry shortly")]
    Unavailable(#[source] DbErr),
    #[error("the database accepts no writes right now (read-only); retry shortly")]
    ReadOnly(#[source] DbErr),
    #[error(
        "another transaction holds what this request needs (DB_LOCK_TIMEOUT_MS ran out); retry shortly"
    )]
    Busy(#[source] Option<DbErr>),
    #[error(
        "the request took longer than this server allows (REQUEST_TIMEOUT_SECS); retry shortly"
    )]
    TimedOut,
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A handler panicked; the panic hook logged it.
    #[error("internal error")]
    Panicked,
    /// The three below are answered for hyper, which refuses such a head before any handler
    /// runs (api/src/own_answers.rs).
    #[error("the request head is not HTTP/1.1 this server can read")]
    MalformedHead,
    #[error("the request head is larger than this server accepts (MAX_HEADER_BYTES)")]
    HeadTooLarge,
    #[error("the request target (path and query) is longer than this server accepts")]
    UriTooLong,
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(err))
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimedOut => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::PaymentRequired { .. } => {
                (StatusCode::PAYMENT_REQUIRED, "tier_limit_reached")
            }
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::TooManyUnknownTokens { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_unknown_tokens")
            }
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::InvalidSignature(_) => (StatusCode::BAD_REQUEST, "invalid_signature"),
            ApiError::NotConfigured(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_configured"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::ReadOnly(_) => (StatusCode::SERVICE_UNAVAILABLE, "read_only"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::TimedOut => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            ApiError::Internal(_) | ApiError::Panicked => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            ApiError::MalformedHead => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::HeadTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
            ),
            ApiError::UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    /// The answer's body, for those written outside axum (api/src/own_answers.rs).
    pub fn json_body(&self) -> Vec<u8> {
        // Serialising two strings and an optional third cannot fail.
        serde_json::to_vec(&self.body()).unwrap_or_default()
    }

    fn body(&self) -> ErrorBody<'_> {
        let field = match self {
            ApiError::Invalid { field, .. } => Some(field.as_str()),
            _ => None,
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.status_and_code().1,
                message: self.to_string(),
                field,
            },
        }
    }
}

/// Seconds a client is asked to wait before retrying a 503: about one lock wait.
const RETRY_AFTER_SECS: &str = "1";

/// A fault of the database ([`Fault`]: a lock conflict, a read-only database, a broken or
/// refused connection) means "try again later"; anything else is our bug.
impl From<DbErr> for ApiError {
    fn from(err: DbErr) -> Self {
        match Fault::of(&err) {
            Some(Fault::LockConflict) => ApiError::Busy(Some(err)),
            Some(Fault::ReadOnly) => ApiError::ReadOnly(err),
            Some(Fault::Unavailable) => ApiError::Unavailable(err),
            None => ApiError::internal(err),
        }
    }
}

// `/openapi.json` documents the error shape from this type (as `Error`), so the document and
// the answers cannot differ.
/// The body of every error answer.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable, for machines.
    pub code: &'a str,
    /// For people.
    pub message: String,
    /// The offending field, if one; absent otherwise.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(source) => {
                tracing::error!(error = %source, ?source, "request failed")
            }
            // WARN: expected in operation (a restart, a failover, a full pool), answered with
            // Retry-After and reported by /healthz; ERROR is for what needs a person.
            ApiError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable")
            }
            ApiError::ReadOnly(source) => {
                tracing::warn!(error = %source, "database is read-only")
            }
            ApiError::Busy(Some(source)) => tracing::warn!(error = %source, "lock wait gave up"),
            ApiError::Busy(None) => tracing::warn!("gave up waiting for the user's earlier writes"),
            ApiError::TimedOut => tracing::warn!("request timed out"),
            ApiError::NotConfigured(what) => tracing::warn!(%what, "not configured"),
            _ => {}
        }
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_)
            | ApiError::ReadOnly(_)
            | ApiError::Busy(_)
            | ApiError::TimedOut => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            ApiError::TooManyUnknownTokens { retry_after_secs }
            | ApiError::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}
