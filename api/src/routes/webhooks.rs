//! `POST /webhooks/stripe`: verified, idempotent Stripe event intake.
//!
//! Answers: 400 for a missing, malformed, wrong or stale signature and for a body that is not
//! a Stripe event (nothing is written); 2xx for everything Stripe should stop retrying,
//! including unknown customers and event types; 5xx when the database fails, so Stripe
//! retries and nothing is lost.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use serde::Serialize;
use std::time::Duration;

use crate::error::ApiError;
use crate::service::stripe_sync;
use crate::state::AppState;
use crate::stripe::{event, signature};

/// Stripe events can exceed the API's body cap; this is the webhook's own.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Serialize)]
pub struct Receipt {
    pub received: bool,
    pub outcome: &'static str,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/stripe", post(receive))
        .route_layer(DefaultBodyLimit::max(MAX_EVENT_BYTES))
}

#[tracing::instrument(skip_all)]
async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Receipt>, ApiError> {
    let stripe = &state.stripe;
    if stripe.webhook_secrets.is_empty() {
        return Err(ApiError::NotConfigured(
            "Stripe webhooks are not configured: set STRIPE_WEBHOOK_SECRETS",
        ));
    }
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    signature::verify(
        header,
        &body,
        stripe.webhook_secrets.as_slice(),
        Duration::from_secs(stripe.webhook_tolerance_secs),
        Utc::now().timestamp(),
    )
    .map_err(|err| {
        tracing::warn!(error = %err, "Stripe webhook refused");
        ApiError::InvalidSignature(err.to_string())
    })?;
    let event = event::parse(&body).map_err(|err| ApiError::BadRequest(err.to_string()))?;
    let outcome = stripe_sync::process(&state.db, &event).await?;
    tracing::info!(event = %event.id, kind = %event.kind, outcome = outcome.as_str(), "Stripe event");
    Ok(Json(Receipt {
        received: true,
        outcome: outcome.as_str(),
    }))
}
