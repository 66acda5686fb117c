//! A user's billing state read from the database at query time: the tier rule of `tier.rs`
//! over all of their subscriptions, so a period that ends with no event still counts.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Query;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use crate::tier::{Standing, decider, retention_tier_over, tier_over};
use crate::{Tier, stripe_customers, stripe_subscriptions, users};

/// The user's tier now and the subscription that decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Billing {
    pub tier: Tier,
    /// The purge's tier: Pro when the user held Pro within the renewal grace.
    pub retention_tier: Tier,
    /// None for a user with neither a subscription nor a status of their own.
    pub decider: Option<Standing>,
}

/// Every subscription of every customer linked to `user_id` that Stripe has not deleted.
pub async fn subscriptions_of<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
) -> Result<Vec<stripe_subscriptions::Model>, DbErr> {
    stripe_subscriptions::Entity::find()
        .filter(
            stripe_subscriptions::Column::CustomerId.in_subquery(
                Query::select()
                    .column(stripe_customers::Column::CustomerId)
                    .from(stripe_customers::Entity)
                    .and_where(stripe_customers::Column::UserId.eq(user_id))
                    .and_where(stripe_customers::Column::DeletedAt.is_null())
                    .take(),
            ),
        )
        .all(db)
        .await
}

impl From<&stripe_subscriptions::Model> for Standing {
    fn from(row: &stripe_subscriptions::Model) -> Self {
        Standing::from_stored(
            Some(row.subscription_id.clone()),
            &row.status,
            row.current_period_end.as_ref(),
            row.past_due_since.as_ref(),
            row.ends_at_period_end,
            row.price_grants_pro,
        )
    }
}

impl users::Model {
    /// The user's own columns as one more subscription (set by hand, or before m010).
    pub fn own_standing(&self) -> Standing {
        Standing::from_stored(
            self.subscription_id.clone(),
            &self.subscription_status,
            self.current_period_end.as_ref(),
            self.past_due_since.as_ref(),
            self.ends_at_period_end,
            self.price_grants_pro,
        )
    }

    /// The tier rule over the user's subscriptions, read now.
    pub async fn billing_at<C: ConnectionTrait>(
        &self,
        db: &C,
        now: DateTime<Utc>,
    ) -> Result<Billing, DbErr> {
        let rows = subscriptions_of(db, self.id).await?;
        let mut standings: Vec<Standing> = rows.iter().map(Standing::from).collect();
        let subscriptions = standings.len();
        standings.push(self.own_standing());
        let tier = tier_over(&standings, now);
        let retention_tier = retention_tier_over(&standings, now);
        // The columns decide only for a user with no subscription row: otherwise they are a
        // copy of one, possibly of the one that decided before the clock moved on.
        let candidates = if subscriptions > 0 {
            &standings[..subscriptions]
        } else {
            &standings[..]
        };
        Ok(Billing {
            tier,
            retention_tier,
            decider: decider(candidates, now).cloned(),
        })
    }

    /// The user's tier at `now`, over all of their subscriptions.
    pub async fn tier_at<C: ConnectionTrait>(
        &self,
        db: &C,
        now: DateTime<Utc>,
    ) -> Result<Tier, DbErr> {
        Ok(self.billing_at(db, now).await?.tier)
    }

    /// The user's tier right now.
    pub async fn tier<C: ConnectionTrait>(&self, db: &C) -> Result<Tier, DbErr> {
        self.tier_at(db, Utc::now()).await
    }

    /// The parsed status. The CHECK constraint makes an error here a sign of a bypassed schema.
    pub fn subscription_status(
        &self,
    ) -> Result<crate::SubscriptionStatus, crate::UnknownSubscriptionStatus> {
        self.subscription_status.parse()
    }
}
