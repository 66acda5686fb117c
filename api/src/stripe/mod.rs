//! Stripe webhooks: signature verification and the events we act on.

pub mod event;
pub mod signature;
