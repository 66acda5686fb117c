//! `/metrics` in Prometheus' text format, on its own listener (`METRICS_ADDR`), never on the
//! API's: what it tells (routes, volumes, outcomes) is for operators, and a separate bind
//! address keeps it off the public port without a token to manage.
//!
//! The `metrics` facade records; `metrics-exporter-prometheus` keeps the values and renders
//! them. The facade's recorder is one per process: installed by the first [`Metrics::install`]
//! and shared by every later one (tests start several servers in one process). Without
//! `METRICS_ADDR` nothing is installed and every `counter!` below is a no-op.
//!
//! Labels are bounded on purpose, since each value set is a series Prometheus keeps: the
//! route is the matched template (`/v1/sessions/{client_id}`, never the raw path), the method
//! one of the standard ones or `other`, the webhook's event type one we know or `other`.
//! docs/operations.md lists every metric and the alerts to set on them.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, State};
use axum::http::{Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::db::Db;
use crate::service::retention::Purged;
use crate::stripe::event::ACTED_ON;

/// Every metric's name, as docs/operations.md lists them.
pub mod names {
    pub const HTTP_REQUESTS: &str = "billing_http_requests_total";
    pub const HTTP_DURATION: &str = "billing_http_request_duration_seconds";
    pub const WEBHOOK_EVENTS: &str = "billing_webhook_events_total";
    pub const POOL_MAX: &str = "billing_db_pool_max_connections";
    pub const POOL_OPEN: &str = "billing_db_pool_open_connections";
    pub const POOL_IN_USE: &str = "billing_db_pool_in_use_connections";
    pub const POOL_BEGIN_WAIT: &str = "billing_db_begin_wait_seconds";
    pub const NEWEST_EVENT_AGE: &str = "billing_stripe_newest_event_age_seconds";
    pub const PURGE_RUNS: &str = "billing_purge_runs_total";
    pub const PURGE_ROWS: &str = "billing_purge_rows_total";
    pub const PURGE_DURATION: &str = "billing_purge_duration_seconds";
    pub const PURGE_LAST_SUCCESS: &str = "billing_purge_last_success_timestamp_seconds";
    pub const STRIPE_SYNC_PROGRESS: &str = "billing_stripe_sync_progress";
}

/// Latency buckets, in seconds: from a cached read (a few ms) to the request timeout's default.
const SECONDS_BUCKETS: [f64; 13] = [
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often recorded histogram samples are folded into their buckets between scrapes, so
/// memory stays flat when nothing scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The longest a scrape waits for the newest event's age; a scrape must answer while the
/// database is slow (the pool's own numbers say why).
const SCRAPE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// The process's recorder, and what a scrape reads besides it.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    db: Option<Db>,
    pool_max: u32,
}

impl Metrics {
    /// Installs the process's recorder (once) and returns a handle on it. Fails only when some
    /// other recorder holds the process's slot.
    pub fn install() -> Result<Self, String> {
        let mut slot = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = slot.as_ref() {
            return Ok(Self::on(handle.clone()));
        }
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
            .and_then(PrometheusBuilder::install_recorder)
            .map_err(|err| err.to_string())?;
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(UPKEEP_EVERY);
            loop {
                ticks.tick().await;
                upkeep.run_upkeep();
            }
        });
        *slot = Some(handle.clone());
        Ok(Self::on(handle))
    }

    fn on(handle: PrometheusHandle) -> Self {
        Self {
            handle,
            db: None,
            pool_max: 0,
        }
    }

    /// A scrape also reads `db`'s pool and its newest Stripe event.
    pub fn with_database(mut self, db: Db, pool_max: u32) -> Self {
        self.db = Some(db);
        self.pool_max = pool_max;
        self
    }

    /// `GET /metrics`, and nothing else, for the metrics listener.
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics here\n") })
            .with_state(self)
    }

    /// The text a scrape answers.
    pub async fn render(&self) -> String {
        if let Some(db) = &self.db {
            record_pool(db, self.pool_max);
            record_newest_event_age(db).await;
        }
        self.handle.render()
    }
}

async fn scrape(State(metrics): State<Metrics>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render().await,
    )
        .into_response()
}

/// Counts each request and its latency by method, matched route template and status. Outside
/// every other layer, so timeouts, refusals and panics are counted with the status they got.
pub async fn track_requests(request: Request<axum::body::Body>, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(names::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(names::HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// Any method a client invents would be a series of its own.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// One webhook delivery's outcome. `event_type` is None when the body was not read as an
/// event (a refused signature, a malformed body); a type we do not act on counts as `other`.
pub fn webhook(event_type: Option<&str>, outcome: &'static str) {
    let event_type = match event_type {
        None => "unread",
        Some(kind) => ACTED_ON
            .iter()
            .find(|known| **known == kind)
            .copied()
            .unwrap_or("other"),
    };
    metrics::counter!(names::WEBHOOK_EVENTS, "event_type" => event_type, "outcome" => outcome)
        .increment(1);
}

/// The time [`Db::begin_with_options`] waited: for a pooled connection, and `BEGIN`'s round
/// trip. sqlx tells no acquire time of its own (only a log line), and behind a
/// transaction-mode pooler every statement begins this way.
pub fn begin_waited(waited: Duration) {
    metrics::histogram!(names::POOL_BEGIN_WAIT).record(waited.as_secs_f64());
}

/// One retention purge: rows removed (None: it failed) and time taken.
pub fn purge(purged: Option<Purged>, took: Duration) {
    let outcome = if purged.is_some() { "ok" } else { "failed" };
    metrics::counter!(names::PURGE_RUNS, "outcome" => outcome).increment(1);
    metrics::histogram!(names::PURGE_DURATION).record(took.as_secs_f64());
    if let Some(purged) = purged {
        metrics::counter!(names::PURGE_ROWS).increment(purged.removed);
        metrics::gauge!(names::PURGE_LAST_SUCCESS).set(chrono::Utc::now().timestamp() as f64);
    }
}

/// stripe-sync's counts so far, each under its `count` label (`customers_seen`, `updated`,
/// `failed`...).
pub fn stripe_sync_progress(counts: &[(&'static str, u64)]) {
    for (count, value) in counts {
        metrics::gauge!(names::STRIPE_SYNC_PROGRESS, "count" => *count).set(*value as f64);
    }
}

fn record_pool(db: &Db, pool_max: u32) {
    let Some((open, idle)) = pool_counts(db) else {
        return;
    };
    metrics::gauge!(names::POOL_MAX).set(f64::from(pool_max));
    metrics::gauge!(names::POOL_OPEN).set(f64::from(open));
    metrics::gauge!(names::POOL_IN_USE).set(f64::from(open.saturating_sub(idle)));
}

/// (open, idle) connections of the pool, from sqlx.
fn pool_counts(db: &Db) -> Option<(u32, u32)> {
    let pool = db.pool();
    let idle = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = pool.get_postgres_connection_pool();
            Some((pool.size(), idle(pool.num_idle())))
        }
        DbBackend::MySql => {
            let pool = pool.get_mysql_connection_pool();
            Some((pool.size(), idle(pool.num_idle())))
        }
        _ => {
            let pool = pool.get_sqlite_connection_pool();
            Some((pool.size(), idle(pool.num_idle())))
        }
    }
}

/// Seconds since the newest recorded Stripe event was created (Stripe's clock against this
/// host's): webhooks that stopped arriving show as a growing age. Absent while no event is
/// recorded, or when the database does not answer in time.
async fn record_newest_event_age(db: &Db) {
    let sql = "SELECT MAX(created) FROM stripe_events";
    let statement = Statement::from_string(db.get_database_backend(), sql);
    let read = tokio::time::timeout(SCRAPE_QUERY_TIMEOUT, db.query_one_raw(statement)).await;
    let newest = match read {
        Ok(Ok(Some(row))) => row.try_get_by_index::<Option<i64>>(0).ok().flatten(),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "metrics: newest Stripe event unreadable");
            None
        }
        _ => None,
    };
    if let Some(created) = newest {
        let age = chrono::Utc::now().timestamp().saturating_sub(created);
        metrics::gauge!(names::NEWEST_EVENT_AGE).set(age as f64);
    }
}
