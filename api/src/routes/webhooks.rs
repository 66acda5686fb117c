//! `POST /webhooks/stripe`: verified, idempotent Stripe event intake.
//!
//! Answers: 400 for a missing, malformed, wrong or stale signature and for a signed body that
//! is not a Stripe event at all (nothing is written); 200 for everything Stripe sends, so it
//! stops retrying: unknown customers, unknown event types, thin events (no `data.object`),
//! events of the other mode (`livemode`), events the rule cannot use, events older than the
//! stored state (`stale`); 5xx when the database fails, so Stripe retries and nothing is lost.

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use chrono::Utc;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa::openapi::schema::Object;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::json::ApiBytes;
use crate::metrics;
use crate::routes::billing::one_of;
use crate::service::stripe_sync::{self, Outcome};
use crate::state::AppState;
use crate::stripe::event::{self, EventError};
use crate::stripe::signature;

/// Stripe events can exceed the API's body cap; this is the webhook's own.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Serialize, ToSchema)]
pub struct Receipt {
    pub received: bool,
    /// What the event did.
    #[schema(schema_with = outcomes)]
    pub outcome: &'static str,
}

fn outcomes() -> Object {
    one_of(Outcome::ALL.map(Outcome::as_str))
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive))
        .route_layer(DefaultBodyLimit::max(MAX_EVENT_BYTES))
}

/// Stripe events, signed with `Stripe-Signature`.
///
/// Acts on checkout.session.completed, customer.subscription.created, .updated, .deleted,
/// .paused and .resumed, and customer.deleted; acknowledges any other type, and thin events,
/// as `ignored`. Recording and applying an event are one transaction: a 5xx leaves nothing
/// behind, and Stripe's retry applies the event.
#[utoipa::path(
    post, path = "/webhooks/stripe", tag = "webhooks",
    params(("Stripe-Signature" = String, Header, description = "`t=<unix time>,v1=<hex HMAC-SHA256>` as Stripe signs it; one v1 entry per secret")),
    request_body(content = Object, content_type = "application/json", description = "the Stripe event, as Stripe sent it"),
    responses(
        (status = 200, description = "received; `outcome` says what it did: `applied`; `stale` (recorded, but older than the subscription's stored state: changed nothing); `duplicate` (delivered before); `unknown_customer` (kept until checkout links the customer); `unknown_user`; `ignored` (a type we do not act on, a thin event, or an event of the other Stripe mode than this deployment's: logged); `unusable` (an active or trialing subscription with no period end: logged, not applied); `unstorable` (an id with a control character or longer than its column: logged, not stored)", body = Receipt),
        (status = 400, description = "missing, malformed, wrong or too old signature (`invalid_signature`; a timestamp ahead of the server's clock is accepted), or a signed body that is not a Stripe event", body = ErrorBody),
        (status = 413, description = "event larger than 1 MiB", body = ErrorBody),
        (status = 500, description = "unexpected error, nothing recorded; Stripe retries", body = ErrorBody),
        (status = 503, description = "database unavailable or busy, request timed out, or webhooks not configured (`not_configured`); nothing recorded, Stripe retries", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
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
        metrics::webhook(None, "invalid_signature");
        tracing::warn!(error = %err, "Stripe webhook refused");
        ApiError::InvalidSignature(err.to_string())
    })?;
    let event = match event::parse(&body, &stripe.pro_prices) {
        Ok(event) => event,
        Err(err @ EventError::Malformed(_)) => {
            metrics::webhook(None, "malformed");
            return Err(ApiError::BadRequest(err.to_string()));
        }
        Err(err @ EventError::Unstorable { .. }) => {
            metrics::webhook(None, Outcome::Unstorable.as_str());
            // Signed by our secret, so Stripe (or whoever holds it) sent it; it needs a person.
            tracing::error!(error = %err, "signed Stripe event acknowledged but not stored");
            return Ok(receipt(Outcome::Unstorable));
        }
        Err(err @ EventError::Unusable(_)) => {
            metrics::webhook(None, Outcome::Unusable.as_str());
            // Failing closed: the next event or `stripe-sync` sets the state.
            tracing::error!(error = %err, "signed Stripe event acknowledged but not applied");
            return Ok(receipt(Outcome::Unusable));
        }
    };
    // Startup refuses webhook secrets without a mode; were it missing, nothing is admitted.
    if !stripe.mode.is_some_and(|mode| mode.admits(event.livemode)) {
        tracing::warn!(
            event = %event.id,
            kind = %event.kind,
            livemode = ?event.livemode,
            serves = ?stripe.mode.map(|mode| mode.as_str()),
            "Stripe event of the other mode than this deployment's: ignored"
        );
        metrics::webhook(Some(&event.kind), Outcome::Ignored.as_str());
        return Ok(receipt(Outcome::Ignored));
    }
    let outcome = stripe_sync::process(&state.db, &event)
        .await
        .inspect_err(|_| metrics::webhook(Some(&event.kind), "error"))?;
    metrics::webhook(Some(&event.kind), outcome.as_str());
    tracing::info!(event = %event.id, kind = %event.kind, outcome = outcome.as_str(), "Stripe event");
    Ok(receipt(outcome))
}

fn receipt(outcome: Outcome) -> Json<Receipt> {
    Json(Receipt {
        received: true,
        outcome: outcome.as_str(),
    })
}
