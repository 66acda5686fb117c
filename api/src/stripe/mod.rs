//! Stripe: webhook signature verification, the events we act on, and a client for the API
//! reads of `stripe-sync`.

pub mod client;
pub mod event;
pub mod mode;
pub mod prices;
pub mod signature;
pub mod stored_time;
