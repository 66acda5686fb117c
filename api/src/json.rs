//! `ApiJson<T>`: axum's `Json` with its rejections turned into our error shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

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
    match rejection {
        // Wrong type, missing or unknown field: serde's message names the field.
        JsonRejection::JsonDataError(err) => {
            let text = err.body_text();
            let detail = text
                .rsplit_once("target type: ")
                .map_or(text.as_str(), |(_, d)| d);
            let field = detail.split_once(':').map_or("body", |(f, _)| f.trim());
            let field = if field.contains(' ') { "body" } else { field };
            ApiError::invalid(field, detail.to_owned())
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
