//! Fairness between callers, before any database work.
//!
//! * [`TokenGate`]: at most `TOKEN_CONCURRENCY` requests per bearer token are handled at
//!   once, reads included; the rest wait in memory (bounded like a lock wait, then 503
//!   `busy`). One user sending 300 concurrent `GET /v1/billing` took every pooled connection
//!   and pushed another user's requests to about 10 s. Writes are also queued one at a time
//!   per user ([`crate::user_queue`]).
//! * [`UnknownTokens`]: a well-formed token the database did not know is remembered for a
//!   while, so repeating it costs no query. (A malformed one never reaches the database:
//!   [`crate::auth`] checks the format first.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::auth;
use crate::error::ApiError;

/// Requests in flight per token hash.
#[derive(Clone)]
pub struct TokenGate {
    per_token: usize,
    wait: Duration,
    in_flight: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl TokenGate {
    pub fn new(per_token: u32, wait: Duration) -> Self {
        Self {
            per_token: usize::try_from(per_token.max(1)).unwrap_or(usize::MAX),
            wait,
            in_flight: Arc::default(),
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn enter(&self, token_hash: String) -> Result<Pass, ApiError> {
        let slots = Arc::clone(
            self.slots()
                .entry(token_hash.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_token))),
        );
        let mut pass = Pass {
            gate: self.clone(),
            token_hash,
            permit: None,
        };
        match tokio::time::timeout(self.wait, slots.acquire_owned()).await {
            Ok(Ok(permit)) => {
                pass.permit = Some(permit);
                Ok(pass)
            }
            // Dropping `pass` forgets the token if nobody else holds or waits for it.
            _ => Err(ApiError::Busy(None)),
        }
    }
}

/// A request's place among its token's requests in flight.
struct Pass {
    gate: TokenGate,
    token_hash: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut slots = self.gate.slots();
        // Only the map holds it: nobody is in flight or waiting with this token.
        if slots
            .get(&self.token_hash)
            .is_some_and(|semaphore| Arc::strong_count(semaphore) == 1)
        {
            slots.remove(&self.token_hash);
        }
    }
}

/// Middleware: a request with a well-formed bearer token waits for its token's turn.
pub async fn one_token_at_a_time(
    State(gate): State<TokenGate>,
    request: Request,
    next: Next,
) -> Response {
    let token_hash = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(auth::well_formed_token)
        .map(auth::hash);
    let Some(token_hash) = token_hash else {
        return next.run(request).await;
    };
    match gate.enter(token_hash).await {
        Ok(pass) => {
            let response = next.run(request).await;
            drop(pass);
            response
        }
        Err(err) => err.into_response(),
    }
}

/// Hashes of well-formed tokens the database did not know, with when they were looked up.
#[derive(Clone, Default)]
pub struct UnknownTokens(Arc<Mutex<HashMap<String, Instant>>>);

impl UnknownTokens {
    /// How long an unknown token is answered 401 from memory. A token is 256 random bits
    /// stored before it is shown, so it cannot become valid after being refused.
    const REMEMBER: Duration = Duration::from_secs(300);
    /// Most entries kept; when full, the memory starts over (cheap, and bounded).
    const CAPACITY: usize = 10_000;

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_known_unknown(&self, token_hash: &str) -> bool {
        self.entries()
            .get(token_hash)
            .is_some_and(|at| at.elapsed() < Self::REMEMBER)
    }

    pub fn remember(&self, token_hash: String) {
        let mut entries = self.entries();
        if entries.len() >= Self::CAPACITY {
            entries.retain(|_, at| at.elapsed() < Self::REMEMBER);
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
        }
        entries.insert(token_hash, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_gets_its_share_and_nothing_is_left_behind() {
        let gate = TokenGate::new(2, Duration::from_millis(50));
        let first = gate.enter("a".into()).await.ok();
        let second = gate.enter("a".into()).await.ok();
        assert!(first.is_some() && second.is_some());
        assert!(
            gate.enter("a".into()).await.is_err(),
            "a third waits, then busy"
        );
        assert!(
            gate.enter("b".into()).await.is_ok(),
            "another token is not held up"
        );
        drop((first, second));
        assert!(gate.slots().is_empty());
    }

    #[test]
    fn unknown_tokens_are_remembered_within_bounds() {
        let unknown = UnknownTokens::default();
        assert!(!unknown.is_known_unknown("h"));
        unknown.remember("h".into());
        assert!(unknown.is_known_unknown("h"));
        for i in 0..UnknownTokens::CAPACITY + 5 {
            unknown.remember(i.to_string());
        }
        assert!(unknown.entries().len() <= UnknownTokens::CAPACITY);
    }
}
