//! Applying Stripe events to the billing columns, idempotently and in any order.
//!
//! Every event is recorded in `stripe_events` (its id is the primary key, so a second delivery
//! is recognised and changes nothing). A subscription event keeps the snapshot it carries. The
//! user's `subscription_id`, `subscription_status` and `current_period_end` are then
//! *recomputed* as the snapshot with the greatest key `(created, lifecycle rank, period end)`
//! among all of that customer's events. So a late, older event never rolls the state back.
//! Events that arrive before checkout links the customer are applied when it does. Two
//! same-second events resolve the same way whichever comes first: the later lifecycle stage
//! wins.
//!
//! Concurrency: recording commits first; the recompute then runs in a transaction of its own
//! that locks the user row. An event committed at the same time as a link is therefore seen
//! by one recompute or the other, and concurrent recomputes end in the same state as
//! sequential ones.

use chrono::{DateTime, FixedOffset, Utc};
use entity::{SubscriptionStatus, stripe_events, users};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter, QuerySelect, SqlErr,
    TransactionTrait,
};

use crate::error::ApiError;
use crate::stripe::event::{Action, Event, lifecycle_rank};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    /// Kept; applied once checkout links the customer to a user.
    UnknownCustomer,
    UnknownUser,
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::UnknownCustomer => "unknown_customer",
            Outcome::UnknownUser => "unknown_user",
            Outcome::Ignored => "ignored",
        }
    }
}

pub async fn process(db: &DatabaseConnection, event: &Event) -> Result<Outcome, ApiError> {
    let txn = db.begin().await?;
    if !record(&txn, event).await? {
        return Ok(Outcome::Duplicate);
    }
    let (customer, outcome) = match &event.action {
        Action::Unhandled => (None, Outcome::Ignored),
        Action::Subscription(snapshot) => (Some(snapshot.customer.clone()), Outcome::Applied),
        Action::LinkCustomer {
            user_id,
            customer,
            subscription,
        } => match (user_id, customer) {
            (Some(user_id), Some(customer)) => {
                let outcome = link(&txn, *user_id, customer, subscription.as_deref()).await?;
                (Some(customer.clone()), outcome)
            }
            _ => (None, Outcome::UnknownUser),
        },
        Action::CustomerDeleted { customer } => (None, forget_customer(&txn, customer).await?),
    };
    txn.commit().await?;
    if let Some(customer) = customer
        && outcome == Outcome::Applied
        && !recompute(db, &customer).await?
    {
        return Ok(Outcome::UnknownCustomer);
    }
    Ok(outcome)
}

/// Stores the event; false when it was stored before (a repeated delivery).
async fn record<C: ConnectionTrait>(db: &C, event: &Event) -> Result<bool, ApiError> {
    let (customer, subscription, status, period_end) = match &event.action {
        Action::Subscription(s) => (
            Some(s.customer.clone()),
            Some(s.subscription.clone()),
            Some(s.status.as_str().to_owned()),
            s.current_period_end.map(|t| t.fixed_offset()),
        ),
        Action::LinkCustomer {
            customer,
            subscription,
            ..
        } => (customer.clone(), subscription.clone(), None, None),
        Action::CustomerDeleted { customer } => (Some(customer.clone()), None, None, None),
        Action::Unhandled => (None, None, None, None),
    };
    let inserted = stripe_events::ActiveModel {
        id: Set(event.id.clone()),
        event_type: Set(event.kind.clone()),
        created: Set(event.created),
        customer_id: Set(customer),
        subscription_id: Set(subscription),
        status: Set(status),
        current_period_end: Set(period_end),
        received_at: Set(Utc::now().fixed_offset()),
    }
    .insert(db)
    .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Ok(false)
        }
        Err(err) => Err(err.into()),
    }
}

async fn link<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    customer: &str,
    subscription: Option<&str>,
) -> Result<Outcome, ApiError> {
    let deleted = stripe_events::Entity::find()
        .filter(stripe_events::Column::CustomerId.eq(customer))
        .filter(stripe_events::Column::EventType.eq("customer.deleted"))
        .count(db)
        .await?;
    if deleted > 0 {
        tracing::info!(
            customer,
            "checkout for a customer Stripe has since deleted; not linked"
        );
        return Ok(Outcome::Ignored);
    }
    let Some(user) = users::Entity::find_by_id(user_id)
        .lock_exclusive()
        .one(db)
        .await?
    else {
        tracing::warn!(user_id, customer, "checkout names a user we do not have");
        return Ok(Outcome::UnknownUser);
    };
    let mut active = user.clone().into_active_model();
    active.stripe_customer_id = Set(Some(customer.to_owned()));
    if user.subscription_id.is_none() {
        active.subscription_id = Set(subscription.map(str::to_owned));
    }
    active.updated_at = Set(Utc::now().fixed_offset());
    match active.update(db).await {
        Ok(_) => Ok(Outcome::Applied),
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            tracing::warn!(
                user_id,
                customer,
                "customer already linked to another user; not linked"
            );
            Ok(Outcome::Ignored)
        }
        Err(err) => Err(err.into()),
    }
}

/// The user linked to `customer`, row-locked until the transaction ends.
async fn lock_user_of<C: ConnectionTrait>(
    db: &C,
    customer: &str,
) -> Result<Option<users::Model>, ApiError> {
    Ok(users::Entity::find()
        .filter(users::Column::StripeCustomerId.eq(customer))
        .lock_exclusive()
        .one(db)
        .await?)
}

/// `customer.deleted`: clear the Stripe fields, status `canceled`.
async fn forget_customer<C: ConnectionTrait>(db: &C, customer: &str) -> Result<Outcome, ApiError> {
    let Some(user) = lock_user_of(db, customer).await? else {
        return Ok(Outcome::UnknownCustomer);
    };
    let mut active = user.into_active_model();
    active.stripe_customer_id = Set(None);
    active.subscription_id = Set(None);
    active.current_period_end = Set(None);
    active.subscription_status = Set(SubscriptionStatus::Canceled.into());
    active.updated_at = Set(Utc::now().fixed_offset());
    active.update(db).await?;
    Ok(Outcome::Applied)
}

/// `(created, lifecycle rank, period end, event id)`: the last part only makes equal keys
/// deterministic.
type Key = (i64, u8, Option<DateTime<FixedOffset>>, String);

fn key(event: &stripe_events::Model) -> Option<Key> {
    let status: SubscriptionStatus = event.status.as_deref()?.parse().ok()?;
    Some((
        event.created,
        lifecycle_rank(status),
        event.current_period_end,
        event.id.clone(),
    ))
}

/// Sets the user's subscription fields from the customer's latest snapshot. False when no
/// user has this customer.
async fn recompute(db: &DatabaseConnection, customer: &str) -> Result<bool, ApiError> {
    let txn = db.begin().await?;
    let Some(user) = lock_user_of(&txn, customer).await? else {
        txn.commit().await?;
        return Ok(false);
    };
    let events = stripe_events::Entity::find()
        .filter(stripe_events::Column::CustomerId.eq(customer))
        .filter(stripe_events::Column::Status.is_not_null())
        .all(&txn)
        .await?;
    let latest = events
        .into_iter()
        .filter_map(|e| key(&e).map(|k| (k, e)))
        .max_by(|(a, _), (b, _)| a.cmp(b));
    if let Some((_, latest)) = latest {
        let mut active = user.into_active_model();
        active.subscription_id = Set(latest.subscription_id);
        active.subscription_status = Set(latest.status.unwrap_or_else(|| "none".to_owned()));
        active.current_period_end = Set(latest.current_period_end);
        active.updated_at = Set(Utc::now().fixed_offset());
        active.update(&txn).await?;
    }
    txn.commit().await?;
    Ok(true)
}
