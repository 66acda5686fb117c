//! Reading Stripe's REST API for `stripe-sync`: a few GET endpoints, paced, retried.
//!
//! Stripe's rules, as its own libraries follow them: 429 and 5xx are retried with exponential
//! backoff and jitter, `Retry-After` is a floor on the wait, and `Stripe-Should-Retry`
//! (`true`/`false`) overrides the status code either way. 401 and 403 are never retried: the
//! key is wrong or lacks a permission, and no wait fixes that. Requests are spaced so that
//! the rate, retries included, stays under the configured number per second.
//!
//! Stripe's clock, not ours: every answer carries Stripe's `Date` header, and what a page shows
//! is dated by it, less [`CLOCK_MARGIN`]. The host's clock may be wrong by minutes or days;
//! the events we order fetched states against are dated by Stripe (`created`), so only
//! Stripe's time compares with them. An answer without a usable `Date` is an error.
//!
//! Mode: a key is a live or a test key (`sk_live_`, `rk_live_`, `sk_test_`, `rk_test_`), and
//! every object read carries `livemode`. An object of the other mode is refused: the key
//! belongs to another Stripe mode than the data it would be written over.
//!
//! The key is sent as a bearer token, which reqwest marks sensitive; `ApiKey` holds it in a
//! `SecretString` (no `Display`, a redacted `Debug`), and error text from Stripe has the key
//! masked out.

use std::fmt;
use std::time::Duration;

use chrono::DateTime;
use reqwest::{StatusCode, Url, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::{Instant, sleep, sleep_until};

use crate::backoff::equal_jitter;
use crate::stripe::mode::StripeMode;

/// A Stripe secret or restricted key; never shown.
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        Self(SecretString::from(key.trim()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    pub fn is_empty(&self) -> bool {
        self.0.expose_secret().is_empty()
    }

    /// The mode the key's prefix names ([`StripeMode::of_key`]); `None` for anything else,
    /// which is no Stripe secret or restricted key.
    pub fn mode(&self) -> Option<StripeMode> {
        StripeMode::of_key(self.0.expose_secret())
    }

    /// `text` with every occurrence of the key masked (Stripe echoes keys in some messages).
    fn mask(&self, text: &str) -> String {
        if self.is_empty() {
            text.to_owned()
        } else {
            text.replace(self.0.expose_secret(), "<redacted>")
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    #[error(
        "Stripe refused STRIPE_API_KEY (HTTP {status}): use a secret key, or a restricted key \
         that may read customers, Checkout Sessions, subscriptions and invoices"
    )]
    Unauthorized { status: u16 },
    #[error("Stripe answered HTTP {status} to {path}: {message}")]
    Api {
        status: u16,
        path: String,
        message: String,
    },
    #[error("gave up on {path} after {attempts} attempts; last: {last}")]
    GaveUp {
        path: String,
        attempts: u32,
        last: String,
    },
    #[error("unexpected answer from Stripe to {path}: {detail}")]
    Malformed { path: String, detail: String },
    #[error(
        "Stripe's answer to {path} has no usable Date header ({detail}): stripe-sync orders \
         what it reads by Stripe's clock, never the host's"
    )]
    NoDate { path: String, detail: String },
    #[error(
        "Stripe answered {path} with {object} in {found} mode, but STRIPE_API_KEY is a \
         {expected}-mode key: nothing was written"
    )]
    ModeMismatch {
        path: String,
        object: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("STRIPE_API_BASE {0:?} is not a URL")]
    BadBase(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// One page of a list endpoint, and as of when it shows Stripe's state.
#[derive(Debug)]
pub struct Page {
    pub data: Vec<Value>,
    /// Stripe's time of the answer (its `Date` header, seconds since the epoch) less
    /// [`CLOCK_MARGIN`]: the page shows Stripe's state no older than this.
    pub as_of: i64,
}

/// Seconds taken off Stripe's `Date` before a fetched state is dated by it. `Date` is stamped
/// when the answer is ready, after the objects were read, and is cut to the whole second;
/// a page of 100 subscriptions with their items takes Stripe a moment to build. Ten seconds
/// covers both with room, so that a change Stripe made after it read the objects (a payment
/// in the same second, say) is dated after the page and wins over it. A larger margin would
/// let a late event older than the page win over it for longer; the next event or sync
/// settles that either way.
pub const CLOCK_MARGIN: i64 = 10;

/// Tries per request, the first included; the waits between them add up to about a minute.
const MAX_ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Stripe's own libraries wait up to 80 s for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(80);
/// The largest page Stripe's list endpoints return.
pub const PAGE_LIMIT: &str = "100";

pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: ApiKey,
    /// The mode every object read must be in (the key's).
    mode: StripeMode,
    pace: Pace,
}

impl StripeClient {
    /// `base` is Stripe's API root (`https://api.stripe.com`); `per_second` caps the request
    /// rate; every object read must be in `mode`.
    pub fn new(
        base: &str,
        key: ApiKey,
        mode: StripeMode,
        per_second: u32,
    ) -> Result<Self, StripeError> {
        let base = base.trim().trim_end_matches('/').to_owned();
        match Url::parse(&base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => return Err(StripeError::BadBase(base)),
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("billing-stripe-sync/", env!("CARGO_PKG_VERSION")))
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| StripeError::Client(e.to_string()))?;
        Ok(Self {
            http,
            base,
            key,
            mode,
            pace: Pace::new(per_second),
        })
    }

    /// `GET {path}` for one object, and as of when it shows Stripe's state (as [`Page::as_of`]).
    pub async fn get(&mut self, path: &str) -> Result<(Value, i64), StripeError> {
        self.get_with(path, &[]).await
    }

    /// [`get`](Self::get) with query parameters (`expand[]`, say).
    pub async fn get_with(
        &mut self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(Value, i64), StripeError> {
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let url = self.url(path, &query)?;
        let (object, as_of) = self.send(path, url).await?;
        self.check_mode(path, &object)?;
        Ok((object, as_of))
    }

    /// Refuses an object of the other mode. Objects without `livemode` (a deleted customer
    /// is only `{id, object, deleted}`) say nothing either way.
    fn check_mode(&self, path: &str, object: &Value) -> Result<(), StripeError> {
        match object.get("livemode").and_then(Value::as_bool) {
            Some(live) if live != (self.mode == StripeMode::Live) => {
                Err(StripeError::ModeMismatch {
                    path: path.to_owned(),
                    object: object
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("an object")
                        .escape_debug()
                        .to_string(),
                    found: if live { "live" } else { "test" },
                    expected: self.mode.as_str(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Every page of a list endpoint, `limit=100`, following `has_more` with
    /// `starting_after`.
    pub fn list(&self, path: &str, query: &[(&str, &str)]) -> Listing {
        Listing {
            path: path.to_owned(),
            query: query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            starting_after: None,
            done: false,
        }
    }

    fn url(&self, path: &str, query: &[(String, String)]) -> Result<Url, StripeError> {
        let mut url = Url::parse(&format!("{}{path}", self.base))
            .map_err(|_| StripeError::BadBase(self.base.clone()))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    async fn send(&mut self, path: &str, url: Url) -> Result<(Value, i64), StripeError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pace.wait().await;
            let sent = self
                .http
                .get(url.clone())
                .bearer_auth(self.key.0.expose_secret())
                .send()
                .await;
            let (floor, last) =
                match sent {
                    Err(err) => (None, self.key.mask(&causes(&err.without_url()))),
                    Ok(response) => {
                        let status = response.status();
                        let headers = response.headers().clone();
                        if status.is_success() {
                            let stripe_now =
                                stripe_date(&headers).map_err(|detail| StripeError::NoDate {
                                    path: path.to_owned(),
                                    detail: detail.to_owned(),
                                })?;
                            let body = response.json::<Value>().await.map_err(|e| {
                                StripeError::Malformed {
                                    path: path.to_owned(),
                                    detail: e.without_url().to_string(),
                                }
                            })?;
                            return Ok((body, stripe_now - CLOCK_MARGIN));
                        }
                        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                            return Err(StripeError::Unauthorized {
                                status: status.as_u16(),
                            });
                        }
                        let message = self.key.mask(&error_message(response.text().await));
                        if !should_retry(status, &headers) {
                            return Err(StripeError::Api {
                                status: status.as_u16(),
                                path: path.to_owned(),
                                message,
                            });
                        }
                        (retry_after(&headers), format!("HTTP {status}: {message}"))
                    }
                };
            if attempt >= MAX_ATTEMPTS {
                return Err(StripeError::GaveUp {
                    path: path.to_owned(),
                    attempts: attempt,
                    last,
                });
            }
            let wait = backoff(attempt).max(floor.unwrap_or_default());
            tracing::warn!(path, attempt, wait_ms = wait.as_millis() as u64, %last, "Stripe request failed; retrying");
            sleep(wait).await;
        }
    }
}

/// A list endpoint, page by page.
pub struct Listing {
    path: String,
    query: Vec<(String, String)>,
    starting_after: Option<String>,
    done: bool,
}

impl Listing {
    /// The next page, or `None` once `has_more` was false.
    pub async fn next(&mut self, client: &mut StripeClient) -> Result<Option<Page>, StripeError> {
        if self.done {
            return Ok(None);
        }
        let mut query = self.query.clone();
        query.push(("limit".to_owned(), PAGE_LIMIT.to_owned()));
        if let Some(after) = &self.starting_after {
            query.push(("starting_after".to_owned(), after.clone()));
        }
        let url = client.url(&self.path, &query)?;
        let (body, as_of) = client.send(&self.path, url).await?;
        let malformed = |detail: &str| StripeError::Malformed {
            path: self.path.clone(),
            detail: detail.to_owned(),
        };
        let Some(data) = body.get("data").and_then(Value::as_array) else {
            return Err(malformed("no data array in the list"));
        };
        let has_more = body
            .get("has_more")
            .and_then(Value::as_bool)
            .ok_or_else(|| malformed("no has_more in the list"))?;
        let last_id = data
            .last()
            .and_then(|o| o.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (has_more, last_id) {
            (true, Some(id)) => self.starting_after = Some(id),
            (true, None) => return Err(malformed("has_more without an object id to go on from")),
            (false, _) => self.done = true,
        }
        for object in data {
            client.check_mode(&self.path, object)?;
        }
        Ok(Some(Page {
            data: data.clone(),
            as_of,
        }))
    }
}

/// Stripe's time from its `Date` header (an HTTP-date, `Thu, 03 Dec 2026 20:00:14 GMT`), in
/// seconds since the epoch.
fn stripe_date(headers: &HeaderMap) -> Result<i64, &'static str> {
    let date = headers
        .get(reqwest::header::DATE)
        .ok_or("none sent")?
        .to_str()
        .map_err(|_| "not text")?;
    DateTime::parse_from_rfc2822(date.trim())
        .map(|t| t.timestamp())
        .map_err(|_| "not an HTTP date")
}

fn should_retry(status: StatusCode, headers: &HeaderMap) -> bool {
    match headers
        .get("stripe-should-retry")
        .and_then(|v| v.to_str().ok())
    {
        Some("true") => true,
        Some("false") => false,
        _ => status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
    }
}

/// `Retry-After` in seconds (Stripe does not send the HTTP-date form), capped at a minute.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(60)))
}

/// The pause before retry `attempt`: [`FIRST_BACKOFF`] doubling to [`MAX_BACKOFF`], with
/// equal jitter ([`equal_jitter`]), so that clients that failed together do not retry together.
fn backoff(attempt: u32) -> Duration {
    equal_jitter(attempt, FIRST_BACKOFF, MAX_BACKOFF)
}

/// "error sending request: connection refused": the error with its causes.
fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Stripe's `{"error": {"message": ...}}`, or the start of whatever else came back.
fn error_message(body: Result<String, reqwest::Error>) -> String {
    let Ok(body) = body else {
        return "(no body)".to_owned();
    };
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| {
            let error = v.get("error")?;
            let message = error.get("message").and_then(Value::as_str).unwrap_or("");
            Some(match error.get("code").and_then(Value::as_str) {
                Some(code) => format!("{code}: {message}"),
                None => message.to_owned(),
            })
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// Spaces requests `1/per_second` apart.
struct Pace {
    interval: Duration,
    next: Instant,
}

impl Pace {
    fn new(per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        sleep_until(self.next).await;
        self.next = Instant::now().max(self.next) + self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn stripe_should_retry_overrides_the_status() {
        let none = headers(&[]);
        assert!(should_retry(StatusCode::TOO_MANY_REQUESTS, &none));
        assert!(should_retry(StatusCode::BAD_GATEWAY, &none));
        assert!(!should_retry(StatusCode::CONFLICT, &none));
        assert!(!should_retry(StatusCode::NOT_FOUND, &none));
        let yes = headers(&[("stripe-should-retry", "true")]);
        let no = headers(&[("stripe-should-retry", "false")]);
        assert!(should_retry(StatusCode::CONFLICT, &yes));
        assert!(!should_retry(StatusCode::SERVICE_UNAVAILABLE, &no));
        assert!(!should_retry(StatusCode::TOO_MANY_REQUESTS, &no));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 1..=12 {
            let step = (FIRST_BACKOFF * 2u32.pow(attempt - 1)).min(MAX_BACKOFF);
            let wait = backoff(attempt);
            assert!(wait >= step / 2 && wait <= step, "{attempt}: {wait:?}");
        }
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "86400")])),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
    }

    #[test]
    fn stripe_time_comes_from_the_date_header() {
        assert_eq!(
            stripe_date(&headers(&[("date", "Thu, 03 Dec 2026 20:00:14 GMT")])),
            Ok(1_796_328_014)
        );
        assert_eq!(stripe_date(&headers(&[])), Err("none sent"));
        assert_eq!(
            stripe_date(&headers(&[("date", "yesterday")])),
            Err("not an HTTP date")
        );
    }

    #[test]
    fn the_key_is_never_shown() {
        let key = ApiKey::from("sk_test_abc123".to_owned());
        assert!(!format!("{key:?}").contains("abc123"));
        assert_eq!(
            key.mask("Invalid API Key provided: sk_test_abc123"),
            "Invalid API Key provided: <redacted>"
        );
    }
}
