//! `ApiJson<T>`, `ApiQuery<T>` and `ApiPath<T>`: axum's `Json`, `Query` and `Path` with their
//! rejections turned into our error shape.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::body_deadline::BodyTimedOut;
use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(explain(rejection)),
        }
    }
}

fn explain(rejection: JsonRejection) -> ApiError {
    if let JsonRejection::BytesRejection(rejection) = rejection {
        return explain_body(rejection);
    }
    match rejection {
        // Wrong type, missing or unknown field: serde's message names the field.
        JsonRejection::JsonDataError(err) => {
            let text = err.body_text();
            let detail = text
                .rsplit_once("target type: ")
                .map_or(text.as_str(), |(_, d)| d);
            ApiError::invalid(&field_of(detail), detail.to_owned())
        }
        JsonRejection::JsonSyntaxError(err) => {
            ApiError::BadRequest(format!("malformed JSON: {}", err.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::UnsupportedMediaType("expected Content-Type: application/json".to_owned())
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// `Bytes`, answering a body that could not be read (too large, too slow, cut short) in our
/// error shape.
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(explain_body)
    }
}

/// Why a body could not be read: its deadline ([`BodyTimedOut`], found in the rejection's
/// sources), its size cap, or the client (a body shorter than its Content-Length).
fn explain_body(rejection: BytesRejection) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(err) = source {
        if err.is::<BodyTimedOut>() {
            return ApiError::BodyTimedOut;
        }
        source = err.source();
    }
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge;
    }
    ApiError::BadRequest(format!(
        "the request body could not be read: {}",
        rejection.body_text()
    ))
}

/// The field a serde data error names: the path before `": "` (`device_name: invalid type…`),
/// or the one in "missing field `x`", "unknown field `x`" or "duplicate field `x`" (after its
/// object's path, if nested); otherwise `body`. For an unknown field the path already ends with
/// the field itself (`extra: unknown field `extra``), so it is not added twice.
fn field_of(detail: &str) -> String {
    for marker in ["missing field `", "unknown field `", "duplicate field `"] {
        if let Some((prefix, rest)) = detail.split_once(marker)
            && let Some((name, _)) = rest.split_once('`')
        {
            let path = prefix.trim_end().trim_end_matches(':').trim();
            return if path.is_empty() || path.contains(' ') || path == "." {
                name.to_owned()
            } else if path == name || path.ends_with(&format!(".{name}")) {
                path.to_owned()
            } else {
                format!("{path}.{name}")
            };
        }
    }
    let field = detail.split_once(':').map_or("body", |(f, _)| f.trim());
    if field.contains(' ') || field.is_empty() || field == "." {
        "body".to_owned()
    } else {
        field.to_owned()
    }
}

/// `Query<T>` answering a bad query string with our 400.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(explain_query(rejection)),
        }
    }
}

fn explain_query(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid query string: {}", rejection.body_text()))
}

/// `Path<T>` answering an undecodable path segment with our 400.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(explain_path(rejection)),
        }
    }
}

fn explain_path(rejection: PathRejection) -> ApiError {
    match rejection {
        // No path parameters at all: our routing is wrong, not the request.
        PathRejection::MissingPathParams(err) => ApiError::internal(err),
        other if other.status().is_server_error() => {
            ApiError::internal(std::io::Error::other(other.body_text()))
        }
        other => ApiError::BadRequest(format!("invalid path: {}", other.body_text())),
    }
}

#[cfg(test)]
mod tests {
    use super::field_of;

    #[test]
    fn names_the_field_serde_names() {
        assert_eq!(
            field_of("missing field `device_name` at line 1 column 2"),
            "device_name"
        );
        assert_eq!(field_of("unknown field `x`, expected one of `a`"), "x");
        assert_eq!(
            field_of("extra: unknown field `extra`, expected `device_name` or `payload`"),
            "extra"
        );
        assert_eq!(
            field_of("duplicate field `device_name` at line 1 column 40"),
            "device_name"
        );
        assert_eq!(
            field_of("payload: invalid type: string, expected map"),
            "payload"
        );
        assert_eq!(
            field_of("payload: missing field `y` at line 1"),
            "payload.y"
        );
        assert_eq!(field_of("invalid type: integer, expected struct"), "body");
    }
}
