//! Stand-ins for the write path `stripe-sync` uses, with the signatures H3's per-subscription
//! billing state provides in `service::stripe_sync`. They are built on today's event log so
//! that the command works and is tested before the two branches meet.
//!
//! SEAM: this whole file is replaced by H3's implementation at merge (delete it, and point
//! `service::stripe_backfill`'s `use ... stripe_seam as seam` at `stripe_sync`).

use chrono::{DateTime, Utc};
use entity::{stripe_events, users};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};

use crate::error::ApiError;
use crate::stripe::event::{Action, Event, Snapshot, lifecycle_rank};

// SEAM: replaced by H3's implementation at merge
pub use super::stripe_sync::Outcome;

// SEAM: replaced by H3's implementation at merge
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    Linked,
    AlreadyLinked,
    LinkedToAnotherUser,
    UnknownUser,
    /// The user has a different customer; today's single `stripe_customer_id` would be
    /// re-pointed and the old customer's subscriptions orphaned, so nothing is done.
    UserHasAnotherCustomer,
}

// SEAM: replaced by H3's implementation at merge
/// The user a customer is linked to, if any.
pub async fn user_of_customer(
    db: &DatabaseConnection,
    customer: &str,
) -> Result<Option<i64>, ApiError> {
    Ok(users::Entity::find()
        .select_only()
        .column(users::Column::Id)
        .filter(users::Column::StripeCustomerId.eq(customer))
        .into_tuple::<i64>()
        .one(db)
        .await?)
}

// SEAM: replaced by H3's implementation at merge
/// Links `customer` to `user_id` through the webhook's own checkout path, so that events
/// stored before the link apply now.
pub async fn link_customer(
    db: &DatabaseConnection,
    user_id: i64,
    customer: &str,
) -> Result<LinkOutcome, ApiError> {
    if let Some(owner) = user_of_customer(db, customer).await? {
        return Ok(if owner == user_id {
            LinkOutcome::AlreadyLinked
        } else {
            LinkOutcome::LinkedToAnotherUser
        });
    }
    let Some(user) = users::Entity::find_by_id(user_id).one(db).await? else {
        return Ok(LinkOutcome::UnknownUser);
    };
    if user.stripe_customer_id.is_some() {
        return Ok(LinkOutcome::UserHasAnotherCustomer);
    }
    let now = Utc::now().timestamp();
    let event = Event {
        id: format!("sync_link_{customer}_{now}"),
        kind: "stripe_sync.link".to_owned(),
        created: now,
        action: Action::LinkCustomer {
            user_id: Some(user_id),
            customer: Some(customer.to_owned()),
            subscription: None,
        },
    };
    Ok(match super::stripe_sync::process(db, &event).await? {
        Outcome::Applied => LinkOutcome::Linked,
        Outcome::UnknownUser => LinkOutcome::UnknownUser,
        _ => LinkOutcome::LinkedToAnotherUser,
    })
}

// SEAM: replaced by H3's implementation at merge
/// Applies a subscription's state as fetched at `observed_at`, ordered like a webhook event
/// created then. A snapshot equal to the newest one stored for that subscription writes
/// nothing, so a second run with nothing changed at Stripe grows no history.
pub async fn apply_fetched_subscription(
    db: &DatabaseConnection,
    snapshot: &Snapshot,
    observed_at: i64,
) -> Result<Outcome, ApiError> {
    let stored = stripe_events::Entity::find()
        .filter(stripe_events::Column::SubscriptionId.eq(&snapshot.subscription))
        .filter(stripe_events::Column::Status.is_not_null())
        .all(db)
        .await?;
    let newest = stored.iter().max_by_key(|e| {
        let rank = e
            .status
            .as_deref()
            .and_then(|s| s.parse().ok())
            .map(lifecycle_rank);
        (e.created, rank, e.current_period_end, e.id.clone())
    });
    let seconds = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp());
    if let Some(newest) = newest
        && newest.customer_id.as_deref() == Some(snapshot.customer.as_str())
        && newest.status.as_deref() == Some(snapshot.status.as_str())
        && newest.current_period_end.map(|t| t.timestamp()) == seconds(snapshot.current_period_end)
    {
        return Ok(Outcome::Duplicate);
    }
    let event = Event {
        id: format!("sync_{}_{observed_at}", snapshot.subscription),
        kind: "stripe_sync.subscription".to_owned(),
        created: observed_at,
        action: Action::Subscription(snapshot.clone()),
    };
    super::stripe_sync::process(db, &event).await
}
