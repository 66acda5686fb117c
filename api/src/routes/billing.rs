use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, FixedOffset};
use serde::Serialize;

use crate::auth::CurrentUser;
use crate::startup::AppState;

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

async fn billing(CurrentUser(user): CurrentUser) -> Json<BillingResponse> {
    Json(BillingResponse {
        tier: user.tier().as_str(),
        stripe_linked: user.stripe_customer_id.is_some(),
        current_period_end: user.current_period_end,
        subscription_status: user.subscription_status,
    })
}
