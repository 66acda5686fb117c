//! Entity models of the billing schema.
//!
//! `_entities/` is exactly what `sea-orm-cli generate entity` writes (docs/writing-a-migration.md has the command;
//! CI regenerates it and fails on any difference), so it is never edited by hand. What we add
//! lives in sibling modules that regeneration never touches.

#[rustfmt::skip]
mod _entities;

pub use _entities::{
    api_tokens, prelude, stripe_customers, stripe_events, stripe_subscriptions, synced_sessions,
    users,
};

mod billing;
mod subscription_status;
mod tier;

pub use billing::{Billing, subscriptions_of};
pub use subscription_status::{SubscriptionStatus, UnknownSubscriptionStatus};
pub use tier::{
    GRACE_PERIOD_DAYS, RENEWAL_GRACE_DAYS, Standing, Tier, compare, decider, retention_tier_over,
    tier_for, tier_over,
};
