//! What every handler is given. It depends on no route and no startup code, so `routes`,
//! `auth` and `startup` all import it without importing each other.

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use crate::health_probe::HealthProbe;
use crate::settings::{Limits, StripeSettings};
use crate::token_gate::{PeerLimit, TokenGate, UnknownTokens, ValidTokens};
use crate::user_queue::UserQueue;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub limits: Arc<Limits>,
    pub stripe: Arc<StripeSettings>,
    /// How long a request may take in all.
    pub request_timeout: Duration,
    /// How long a request's body may take to arrive (`BODY_READ_TIMEOUT_SECS`).
    pub body_read_timeout: Duration,
    /// How long a request waits for a lock (`DB_LOCK_TIMEOUT_MS`).
    pub lock_timeout: Duration,
    /// Each user's writes, one at a time.
    pub user_queue: UserQueue,
    /// Requests in flight per token (`TOKEN_CONCURRENCY`).
    pub token_gate: TokenGate,
    /// Well-formed tokens the database lately did not know.
    pub unknown_tokens: UnknownTokens,
    /// Tokens lately found valid, which a peer past its limit may still use.
    pub valid_tokens: ValidTokens,
    /// Lookups of unknown tokens per peer address (`UNKNOWN_TOKENS_PER_PEER`).
    pub peer_limit: PeerLimit,
    /// `/healthz`'s own connection, used when the pool is exhausted.
    pub health_probe: HealthProbe,
}
