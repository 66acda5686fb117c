use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, FixedOffset, Utc};
use serde::Serialize;

use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Serialize)]
pub struct BillingResponse {
    pub tier: &'static str,
    pub subscription_status: String,
    pub current_period_end: Option<DateTime<FixedOffset>>,
    pub stripe_linked: bool,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/billing", get(billing))
}

/// The tier and the subscription that decides it, computed now over all of the user's
/// subscriptions: the stored columns may name one whose period has ended since.
#[tracing::instrument(skip_all, fields(user_id = user.id))]
async fn billing(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<Json<BillingResponse>, ApiError> {
    let billing = user.billing_at(&state.db, Utc::now()).await?;
    let (subscription_status, current_period_end) = match billing.decider {
        Some(decides) => (
            decides.status.as_str().to_owned(),
            decides.current_period_end.map(|t| t.fixed_offset()),
        ),
        None => (user.subscription_status, user.current_period_end),
    };
    Ok(Json(BillingResponse {
        tier: billing.tier.as_str(),
        stripe_linked: user.stripe_customer_id.is_some(),
        current_period_end,
        subscription_status,
    }))
}
