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
//! * [`PeerLimit`]: each peer address may send `UNKNOWN_TOKENS_PER_PEER` credentials that
//!   open nothing per minute (missing, malformed, unknown, revoked); past it, any request
//!   without a token lately seen valid ([`ValidTokens`]) is answered 429 without a query,
//!   and only after 1 to 2 s. Fresh random tokens each cost a query, which the negative
//!   cache cannot save: 1,000 clients sending them kept the pool busy for everyone. Refusals
//!   answered at once kept the cores busy instead.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::auth;
use crate::error::ApiError;
use crate::rate_buckets::{RateBuckets, held, retry_after_secs};

/// Requests in flight per token hash, and requests started per second.
#[derive(Clone)]
pub struct TokenGate {
    per_token: usize,
    wait: Duration,
    in_flight: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// `TOKEN_REQUESTS_PER_SEC` (a second's worth as a burst); `None` when 0 (off).
    rate: Option<RateBuckets<String>>,
}

impl TokenGate {
    /// Most tokens whose request rate is remembered; see [`RateBuckets`] for when full.
    const RATE_CAPACITY: usize = 100_000;

    pub fn new(per_token: u32, per_second: u32, wait: Duration) -> Self {
        Self {
            per_token: usize::try_from(per_token.max(1)).unwrap_or(usize::MAX),
            wait,
            in_flight: Arc::default(),
            rate: (per_second > 0).then(|| {
                let per_second = f64::from(per_second);
                RateBuckets::new(per_second, per_second, Self::RATE_CAPACITY)
            }),
        }
    }

    /// Waits for the token's turn under `TOKEN_REQUESTS_PER_SEC`: at once within its burst,
    /// then one request per 1/N s, in the order they came. A turn further off than a lock
    /// wait is refused with 429 `rate_limited`, held like every refusal by a rate.
    /// Concurrency alone did not stop one user's read flood from taking the cores: four
    /// requests in flight, each replaced the moment it finished, served ~2,200 reads a second
    /// and pushed another user's p99 4.4× to 4.7×.
    async fn pace(&self, token_hash: &str) -> Result<(), ApiError> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        match rate.take(token_hash, self.wait) {
            Ok(wait) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok(())
            }
            Err(wait) => Err(held(ApiError::RateLimited {
                retry_after_secs: retry_after_secs(wait),
            })
            .await),
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn enter(&self, token_hash: String) -> Result<Pass, ApiError> {
        self.pace(&token_hash).await?;
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

/// Hashes of tokens a lookup lately found valid: a peer past its [`PeerLimit`] may still use
/// them (they are looked up as usual, so a revocation holds at once). Whoever holds one has a
/// valid token and has no need to guess; someone guessing cannot name one.
#[derive(Clone, Default)]
pub struct ValidTokens(Arc<Mutex<HashMap<String, Instant>>>);

impl ValidTokens {
    const REMEMBER: Duration = Duration::from_secs(3600);
    /// Most entries kept; when full, the memory starts over (a user then counts against their
    /// peer's limit once more until their next success).
    const CAPACITY: usize = 100_000;

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn contains(&self, token_hash: &str) -> bool {
        self.entries()
            .get(token_hash)
            .is_some_and(|at| at.elapsed() < Self::REMEMBER)
    }

    pub fn remember(&self, token_hash: &str) {
        let mut entries = self.entries();
        if let Some(at) = entries.get_mut(token_hash) {
            *at = Instant::now();
            return;
        }
        if entries.len() >= Self::CAPACITY {
            entries.retain(|_, at| at.elapsed() < Self::REMEMBER);
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
        }
        entries.insert(token_hash.to_owned(), Instant::now());
    }
}

/// A token bucket per peer address for credentials that open nothing: missing, malformed,
/// unknown or revoked bearer tokens (`UNKNOWN_TOKENS_PER_PEER` a minute; 0: off).
#[derive(Clone)]
pub struct PeerLimit {
    per_minute: u32,
    trust_forwarded_for: bool,
    /// Failures left per peer, refilled at `per_minute / 60` a second up to `per_minute`.
    buckets: RateBuckets<IpAddr>,
}

impl PeerLimit {
    /// Most peers tracked (an IPv6 /64 counting as one); see [`RateBuckets`] for when full.
    const CAPACITY: usize = 65_536;
    /// How long a refusal past the allowance is held ([`crate::rate_buckets::held`]).
    pub const REFUSAL_DELAY: Duration = crate::rate_buckets::REFUSAL_DELAY;

    pub fn new(per_minute: u32, trust_forwarded_for: bool) -> Self {
        Self {
            per_minute,
            trust_forwarded_for,
            buckets: RateBuckets::new(
                f64::from(per_minute.max(1)),
                f64::from(per_minute.max(1)) / 60.0,
                Self::CAPACITY,
            ),
        }
    }

    /// The peer a request counts against: the connection's address, or with
    /// `TRUST_X_FORWARDED_FOR` the last address in `X-Forwarded-For` (the one the balancer
    /// appended; the entries before it are the client's to choose). IPv6 addresses count by
    /// their /64, which is what one host is usually given.
    pub fn peer(&self, headers: &HeaderMap, connection: Option<SocketAddr>) -> Option<IpAddr> {
        let forwarded = self
            .trust_forwarded_for
            .then(|| {
                headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .next_back()
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.rsplit(',').next())
                    .and_then(|last| last.trim().parse::<IpAddr>().ok())
            })
            .flatten();
        let ip = forwarded.or(connection.map(|address| address.ip()))?;
        Some(match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
            v4 => v4,
        })
    }

    /// The peer, if the limit is on and the request has one.
    fn limited(&self, peer: Option<IpAddr>) -> Option<IpAddr> {
        peer.filter(|_| self.per_minute > 0)
    }

    /// Takes one from `peer`'s bucket, or says in how many seconds one will be back.
    fn take(&self, peer: IpAddr) -> Result<(), u64> {
        match self.buckets.take(&peer, Duration::ZERO) {
            Ok(_) => Ok(()),
            // At most a minute: the bucket refills at least one a minute.
            Err(wait) => Err(retry_after_secs(wait).min(60)),
        }
    }

    /// Before looking a token up: takes one failure from `peer`'s allowance, given back
    /// unless [`Lookup::found_nothing`] is called (only failures count). Past the allowance,
    /// the refusal held for [`Self::REFUSAL_DELAY`] or longer.
    pub async fn admit(&self, peer: Option<IpAddr>) -> Result<Lookup, ApiError> {
        let Some(peer) = self.limited(peer) else {
            return Ok(Lookup(None));
        };
        match self.take(peer) {
            Ok(()) => Ok(Lookup(Some((self.clone(), peer)))),
            Err(retry_after_secs) => {
                Err(held(ApiError::TooManyUnknownTokens { retry_after_secs }).await)
            }
        }
    }

    /// Credentials that open nothing without a lookup (none, malformed, or a token lately
    /// found unknown): 401 while `peer`'s allowance lasts, each one taken from it; past it,
    /// the refusal held for [`Self::REFUSAL_DELAY`] or longer. Cheap failures count like
    /// looked-up ones: otherwise a flood of them is answered as fast as it is sent.
    pub async fn failed(&self, peer: Option<IpAddr>) -> ApiError {
        let Some(peer) = self.limited(peer) else {
            return ApiError::Unauthorized;
        };
        match self.take(peer) {
            Ok(()) => ApiError::Unauthorized,
            Err(retry_after_secs) => {
                held(ApiError::TooManyUnknownTokens { retry_after_secs }).await
            }
        }
    }

    fn give_back(&self, peer: IpAddr) {
        self.buckets.give_back(&peer);
    }

    /// Peers tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.tracked()
    }
}

/// A lookup taken from a peer's bucket; given back when dropped, unless it found nothing.
pub struct Lookup(Option<(PeerLimit, IpAddr)>);

impl Lookup {
    pub fn found_nothing(mut self) {
        self.0 = None;
    }
}

impl Drop for Lookup {
    fn drop(&mut self) {
        if let Some((limit, peer)) = self.0.take() {
            limit.give_back(peer);
        }
    }
}

/// The connection's address of a request served by [`crate::serve`] (absent elsewhere, e.g.
/// a router called directly: then no peer limit applies).
pub fn connection_address(parts: &Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| *address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_gets_its_share_and_nothing_is_left_behind() {
        let gate = TokenGate::new(2, 0, Duration::from_millis(50));
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

    #[tokio::test]
    async fn a_peer_runs_out_of_failures_but_not_of_lookups_that_succeed() {
        let limit = PeerLimit::new(3, false);
        let one = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..10 {
            drop(limit.admit(one).await.ok());
        }
        for _ in 0..3 {
            limit.admit(one).await.map(Lookup::found_nothing).ok();
        }
        let started = std::time::Instant::now();
        let refused = limit.admit(one).await.err();
        assert!(
            matches!(refused, Some(ApiError::TooManyUnknownTokens { retry_after_secs }) if (1..=20).contains(&retry_after_secs)),
            "{refused:?}"
        );
        assert!(
            started.elapsed() >= PeerLimit::REFUSAL_DELAY,
            "a refusal is held"
        );
        // Failures that need no lookup count the same way, and past the allowance are held.
        assert!(matches!(
            limit.failed(one).await,
            ApiError::TooManyUnknownTokens { .. }
        ));
        let two = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert!(matches!(limit.failed(two).await, ApiError::Unauthorized));
        }
        assert!(limit.admit(two).await.is_err(), "cheap failures spent it");
        assert!(limit.admit(None).await.is_ok(), "no peer, no limit");
        let off = PeerLimit::new(0, false);
        for _ in 0..10 {
            off.admit(one).await.map(Lookup::found_nothing).ok();
            assert!(matches!(off.failed(one).await, ApiError::Unauthorized));
        }
        assert!(off.admit(one).await.is_ok() && off.tracked() == 0);
    }

    #[test]
    fn the_peer_is_the_connection_unless_the_balancer_is_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        let connection = Some(SocketAddr::from(([127, 0, 0, 9], 4000)));
        let own = PeerLimit::new(1, false);
        assert_eq!(
            own.peer(&headers, connection),
            Some(IpAddr::from([127, 0, 0, 9]))
        );
        let trusting = PeerLimit::new(1, true);
        assert_eq!(
            trusting.peer(&headers, connection),
            Some(IpAddr::from([5, 6, 7, 8]))
        );
        headers.insert("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(
            trusting.peer(&headers, connection),
            Some(IpAddr::from([127, 0, 0, 9]))
        );
        let v6: SocketAddr = "[2001:db8:1:2:3:4:5:6]:80".parse().unwrap();
        assert_eq!(
            own.peer(&HeaderMap::new(), Some(v6)),
            Some("2001:db8:1:2::".parse().unwrap())
        );
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
