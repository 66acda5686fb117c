use axum::Json;
use axum::extract::State;
use chrono::{DateTime, FixedOffset, Utc};
use entity::{SubscriptionStatus, Tier};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::schema::{Object, Type};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
#[schema(as = Billing)]
pub struct BillingResponse {
    #[schema(schema_with = tiers)]
    pub tier: &'static str,
    /// Of the subscription that decides the tier now, among all of the user's.
    #[schema(schema_with = subscription_statuses)]
    pub subscription_status: String,
    /// Of the same subscription.
    #[schema(required = true)]
    pub current_period_end: Option<DateTime<FixedOffset>>,
    pub stripe_linked: bool,
}

/// A string that is one of `values`.
pub(crate) fn one_of(values: impl IntoIterator<Item = &'static str>) -> Object {
    Object::builder()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .build()
}

fn tiers() -> Object {
    one_of([Tier::Free, Tier::Pro].map(Tier::as_str))
}

fn subscription_statuses() -> Object {
    one_of(SubscriptionStatus::ALL.map(SubscriptionStatus::as_str))
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(billing))
}

#[utoipa::path(
    get, path = "/v1/billing", tag = "billing", security(("bearer" = [])),
    responses((status = 200, description = "billing state", body = BillingResponse))
)]
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
