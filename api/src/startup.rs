//! Building the application: database, migrations, router, listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use migration::connect::{self, DatabaseUrl};
use sea_orm::{ConnectOptions, DbBackend, sqlx};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::body_deadline::limit_body_time;
use crate::db::{Db, Pooler};
use crate::error::ApiError;
use crate::health_probe::HealthProbe;
use crate::metrics::Metrics;
use crate::routes;
use crate::serve::{self, ConnectionLimits};
use crate::settings::{MigrateMode, Settings};
use crate::startup_error::StartupError;
use crate::state::AppState;
use crate::token_gate::{PeerLimit, TokenGate, UnknownTokens, one_token_at_a_time};
use crate::user_queue::UserQueue;

/// Every route, with request ids, tracing, the body cap and the request timeout.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let request_timeout = state.request_timeout;
    let body_read_timeout = state.body_read_timeout;
    let token_gate = state.token_gate.clone();
    Router::from(routes::api())
        .fallback(|| async { ApiError::NotFound("no such route") })
        // axum adds the `Allow` header to this answer.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        // Inside the request timeout: a request waiting for its token's turn is bounded too.
        .layer(middleware::from_fn_with_state(
            token_gate,
            one_token_at_a_time,
        ))
        .layer(middleware::from_fn_with_state(request_timeout, time_limit))
        .layer(middleware::from_fn_with_state(
            body_read_timeout,
            limit_body_time,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(middleware::map_request(drop_unusable_request_id))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|request: &Request<_>| {
                            let request_id = request
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-");
                            tracing::info_span!(
                                "request",
                                method = %request.method(),
                                path = %request.uri().path(),
                                request_id = %request_id,
                            )
                        })
                        // One line per request at INFO: status and latency, inside its span.
                        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                        // tower-http would add an ERROR line for every 5xx. Each of ours is
                        // logged once where it is made: a 503 (expected: busy, restarting,
                        // read-only) at WARN, a 500 at ERROR.
                        .on_failure(()),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::custom(panic_answer))
                .layer(middleware::from_fn(refuse_encoded_bodies)),
        )
        .with_state(state)
}

/// A panic in a handler is answered with our JSON 500 instead of a dropped connection. The
/// panic is logged once, as one line, by the binary's panic hook (src/logging.rs), which
/// knows where it happened; this answer adds no second line.
fn panic_answer(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Panicked.into_response()
}

/// A body with a `Content-Encoding` (gzip, br, ...) is refused with 415: nothing here decodes
/// one, and it was read as if plain. `identity` means no encoding.
async fn refuse_encoded_bodies(request: Request<axum::body::Body>, next: Next) -> Response {
    let encoded = request
        .headers()
        .get_all(axum::http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"));
    if encoded {
        return ApiError::UnsupportedMediaType(
            "request bodies are not decoded: send it without Content-Encoding".to_owned(),
        )
        .into_response();
    }
    next.run(request).await
}

/// Longest `x-request-id` taken from a client (a UUID is 36 characters).
const MAX_REQUEST_ID_LEN: usize = 128;

/// A client's (or proxy's) `x-request-id` is kept only if it is short and made of characters
/// that cannot forge a log field (letters, digits, `-_.:/+@`); otherwise it is removed, and
/// the next layer gives the request a UUID of ours. Before, 6,000 characters were echoed
/// back, and spaces, `=` and quotes in text logs could pass for other fields.
async fn drop_unusable_request_id(
    mut request: Request<axum::body::Body>,
) -> Request<axum::body::Body> {
    let usable = request
        .headers()
        .get_all("x-request-id")
        .iter()
        .map(|value| {
            let bytes = value.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= MAX_REQUEST_ID_LEN
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+@".contains(b))
        })
        .collect::<Vec<_>>();
    // Exactly one, and usable.
    if usable != [true] {
        request.headers_mut().remove("x-request-id");
    }
    request
}

/// A request that outlives its time is answered in our error shape; dropping it rolls back
/// its transaction and returns its connection to the pool.
async fn time_limit(
    State(limit): State<Duration>,
    request: Request<axum::body::Body>,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::TimedOut.into_response(),
    }
}

/// Opens the database named by the settings (or the embedded SQLite default), with every
/// lock wait bounded by `DB_LOCK_TIMEOUT_MS`.
pub async fn open_database(settings: &Settings) -> Result<(Db, DatabaseUrl), StartupError> {
    let url = connect::resolve_url(settings.database_url())?;
    let db = open_pool(&url, settings).await?;
    Ok((db, url))
}

/// [`open_database`], with the migrations handled as `--migrate` (`MIGRATE`) says:
/// * `on-start` (the default, for the embedded SQLite): applies pending migrations under the
///   migrator's lock;
/// * `check`: refuses to go on while any is pending (the deploy ran `migration up` already);
/// * `skip`: uses the schema as it is.
///
/// Both look at the migrations on `MIGRATION_DATABASE_URL` when it is set: the migrator's
/// lock is a session's, which a transaction-mode pooler does not keep.
pub async fn open_migrated(settings: &Settings) -> Result<(Db, DatabaseUrl), StartupError> {
    if settings.db_pooler == Pooler::Transaction
        && settings.migration_database_url.is_none()
        && settings.migrate != MigrateMode::Skip
    {
        return Err(StartupError::MigrationsNeedDirectUrl);
    }
    match settings.migrate {
        MigrateMode::OnStart => open_after_migrating(settings).await,
        MigrateMode::Check => {
            let (db, url) = open_database(settings).await?;
            if let Err(err) = check_nothing_pending(settings, &db, &url).await {
                let _ = db.close().await;
                return Err(err);
            }
            Ok((db, url))
        }
        MigrateMode::Skip => {
            tracing::info!("--migrate skip: using the schema as it is, migrations not checked");
            open_database(settings).await
        }
    }
}

/// `--migrate check`: reads the migration history on the migrations' URL (the pool's own
/// connection when that is the same database) and serves it under the rollback rule
/// ([`migration::rollback`]) as long as nothing is pending.
async fn check_nothing_pending(
    settings: &Settings,
    db: &Db,
    url: &DatabaseUrl,
) -> Result<(), StartupError> {
    let history = if settings.migration_database_url.is_some() {
        let migrations_url = connect::resolve_url(settings.migration_database_url())?;
        let reader = connect::open_to_read(
            &migrations_url,
            settings.database_schema.as_deref(),
            connect::DEFAULT_CONNECT_TIMEOUT,
            1,
        )
        .await?;
        let history = migration::cli::history_for_serving(&reader, &migrations_url).await;
        let _ = reader.close().await;
        history?
    } else {
        migration::cli::history_for_serving(db.pool(), url).await?
    };
    if !history.pending.is_empty() {
        return Err(StartupError::PendingMigrations {
            pending: history.pending,
        });
    }
    warn_served(&history);
    Ok(())
}

/// Logs why a history that `migration up` would refuse is served anyway.
fn warn_served(history: &migration::rollback::History) {
    for warning in history.warnings() {
        tracing::warn!("{warning}");
    }
}

/// [`open_database`] after applying pending migrations under the migrator's lock.
///
/// On PostgreSQL and MySQL they run on connections of their own, to `MIGRATION_DATABASE_URL`
/// (else `DATABASE_URL`): each migration step bounds its own lock waits, and the API's bound
/// would cut short what must wait longer (`CREATE INDEX CONCURRENTLY` waits for older
/// transactions to end). SQLite's steps take no such waits, and a `:memory:` database exists
/// only on its own pool.
async fn open_after_migrating(settings: &Settings) -> Result<(Db, DatabaseUrl), StartupError> {
    let url = connect::resolve_url(settings.database_url())?;
    if url.backend != DbBackend::Sqlite {
        let migrations_url = connect::resolve_url(settings.migration_database_url())?;
        let migrator = connect::open(
            &migrations_url,
            settings.database_schema.as_deref(),
            connect::DEFAULT_CONNECT_TIMEOUT,
            MIGRATOR_CONNECTIONS,
        )
        .await?;
        let migrated = migrate_on_start(&migrator, &migrations_url).await;
        let _ = migrator.close().await;
        migrated?;
    }
    let db = open_pool(&url, settings).await?;
    if url.backend == DbBackend::Sqlite
        && let Err(err) = migrate_on_start(db.pool(), &url).await
    {
        let _ = db.close().await;
        return Err(err);
    }
    Ok((db, url))
}

/// `--migrate on-start` under the rollback rule ([`migration::rollback`]), as `check` reads
/// it: a history with newer migrations or changed checksums and nothing pending is served with
/// a warning, without running `migration up` (which would refuse it); otherwise `up` runs as
/// ever, and refuses a changed checksum before it applies anything.
async fn migrate_on_start(
    db: &sea_orm::DatabaseConnection,
    url: &DatabaseUrl,
) -> Result<(), StartupError> {
    let history = migration::cli::history_for_serving(db, url).await?;
    if history.pending.is_empty() && !history.warnings().is_empty() {
        warn_served(&history);
        return Ok(());
    }
    migration::cli::migrate_up(db, url).await?;
    Ok(())
}

/// As many as the `migration` command uses.
const MIGRATOR_CONNECTIONS: u32 = 4;

/// The pool's size: `DB_MAX_CONNECTIONS`, but one on SQLite, which allows one writer at a time
/// (a single connection makes requests queue instead of failing with "database is locked").
fn pool_size(settings: &Settings, backend: DbBackend) -> u32 {
    if backend == DbBackend::Sqlite {
        1
    } else {
        settings.db_max_connections.max(1)
    }
}

async fn open_pool(url: &DatabaseUrl, settings: &Settings) -> Result<Db, StartupError> {
    let max = pool_size(settings, url.backend);
    let lock_timeout = settings.lock_timeout();
    let per_transaction =
        url.backend == DbBackend::Postgres && settings.db_pooler == Pooler::Transaction;
    let pool = connect::open_with(
        url,
        settings.database_schema.as_deref(),
        connect::DEFAULT_CONNECT_TIMEOUT,
        max,
        |options| {
            if per_transaction {
                behind_transaction_pooler(options)
            } else {
                bound_lock_waits(options, url.backend, lock_timeout)
            }
        },
    )
    .await
    .map_err(|err| match err.to_string() {
        detail if detail.contains("unsupported startup parameter: options") => {
            StartupError::PoolerRefusedOptions
        }
        _ => err.into(),
    })?;
    let db = if per_transaction {
        let schema = settings
            .database_schema
            .as_deref()
            .unwrap_or(migration::schema::DEFAULT_SCHEMA);
        Db::per_transaction(pool, lock_timeout, schema)
    } else {
        Db::direct(pool)
    };
    if url.backend == DbBackend::Postgres
        && let Err(err) = check_lock_timeout(&db, lock_timeout).await
    {
        let _ = db.close().await;
        return Err(err);
    }
    Ok(db)
}

/// Refuses to serve when the statements do not see `DB_LOCK_TIMEOUT_MS`: a pooler that drops
/// the startup options (`ignore_startup_parameters = options`) would otherwise leave every
/// lock wait unbounded without a word.
async fn check_lock_timeout(db: &Db, expected: Duration) -> Result<(), StartupError> {
    let found =
        db.lock_timeout_in_force()
            .await
            .map_err(|err| StartupError::SettingsUnreadable {
                detail: err.to_string(),
            })?;
    let expected = u64::try_from(expected.as_millis()).unwrap_or(u64::MAX);
    match found {
        Some(ms) if ms == expected => Ok(()),
        found => Err(StartupError::LockTimeoutNotInForce {
            found: found.map_or_else(|| "unknown".to_owned(), |ms| format!("{ms} ms")),
            expected,
        }),
    }
}

/// Behind a transaction-mode pooler: no startup `options` (PgBouncer refuses them; [`Db`] sets
/// the lock timeout in each transaction instead), and no statement cache. sqlx would keep
/// each prepared statement by name on the server connection it was prepared on, and reuse the
/// name on whichever server connection the pooler lends next ("prepared statement "sqlx_s_2"
/// does not exist", or "already exists" where another client's statement of that name was
/// left). Uncached, sqlx 0.9 still prepares a named statement for each query but binds it at
/// once, in the same transaction; PgBouncer's `server_reset_query_always` drops the names
/// when the transaction ends (docs/operations.md). Each query then costs a Parse round trip
/// and a plan of its own, which is what `plan_cache_mode = force_custom_plan` asks of a
/// direct connection anyway (see [`bound_lock_waits`]).
fn behind_transaction_pooler(options: &mut ConnectOptions) {
    options.map_sqlx_postgres_opts(|pg| pg.statement_cache_capacity(0));
}

/// Sets the lock timeout on every connection of the pool as it opens, so no statement (in a
/// request, a webhook or the purge) waits on another transaction's lock for longer. Without it
/// one held row ties up a connection per request for that row until the pool is empty and
/// every user waits.
/// * PostgreSQL: `lock_timeout` as a startup option (no extra round trip). With it,
///   `plan_cache_mode = force_custom_plan`: a pooled connection keeps its prepared statements
///   for its whole life, and PostgreSQL's default would fix each on one generic plan after five
///   runs, chosen with the statistics of that moment. Plans fixed while `stripe_subscriptions`
///   was nearly empty kept scanning it as it grew (bench webhooks: the pool used first served
///   a third of the deliveries of a pool opened later). Planning every run costs CPU (not
///   measured side by side; docs/benchmarks.md), which beats a plan gone stale.
/// * MySQL/MariaDB: `innodb_lock_wait_timeout` (row locks) and `lock_wait_timeout` (metadata
///   locks, e.g. behind a migration's DDL) for the session; both count whole seconds, so the
///   value is rounded up.
/// * SQLite: its busy timeout.
pub fn bound_lock_waits(options: &mut ConnectOptions, backend: DbBackend, timeout: Duration) {
    match backend {
        DbBackend::Postgres => {
            let millis = timeout.as_millis().to_string();
            options.map_sqlx_postgres_opts(move |pg| {
                pg.options([
                    ("lock_timeout", millis.clone()),
                    ("plan_cache_mode", "force_custom_plan".to_owned()),
                ])
            });
        }
        DbBackend::MySql => {
            let seconds = timeout.as_millis().div_ceil(1000).max(1);
            let sql = format!(
                "SET SESSION innodb_lock_wait_timeout = {seconds}, lock_wait_timeout = {seconds}"
            );
            options.map_sqlx_mysql_pool_opts(move |pool| {
                let sql = sql.clone();
                pool.after_connect(move |conn, _| {
                    let sql = sql.clone();
                    Box::pin(async move {
                        sqlx::Executor::execute(conn, sqlx::AssertSqlSafe(sql))
                            .await
                            .map(|_| ())
                    })
                })
            });
        }
        _ => {
            options.map_sqlx_sqlite_opts(move |sqlite| sqlite.busy_timeout(timeout));
        }
    }
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    purge_every: Option<Duration>,
    connections: ConnectionLimits,
    /// `METRICS_ADDR`'s listener, bound, and what it serves.
    metrics: Option<(TcpListener, Metrics)>,
}

/// Connections the metrics listener serves at once: a scraper or two, and a person with curl.
const METRICS_CONNECTIONS: usize = 16;

/// `/metrics` served on its own listener until [`MetricsServer::stop`].
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `METRICS_ADDR` and serves `metrics` there, for the server or a command.
    pub async fn start(
        addr: SocketAddr,
        metrics: Metrics,
        connections: &ConnectionLimits,
    ) -> Result<Self, StartupError> {
        let listener = bind_metrics(addr).await?;
        Self::serve(listener, metrics, connections)
    }

    fn serve(
        listener: TcpListener,
        metrics: Metrics,
        connections: &ConnectionLimits,
    ) -> Result<Self, StartupError> {
        let addr = listener.local_addr().map_err(StartupError::LocalAddr)?;
        let limits = ConnectionLimits {
            max_connections: METRICS_CONNECTIONS,
            ..connections.clone()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve::serve(listener, metrics.router(), limits, async {
            let _ = stopped.await;
        }));
        Ok(Self { addr, stop, task })
    }

    /// Closes the listener and waits for the scrapes in flight.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: format!("{addr} (METRICS_ADDR)"),
            source,
        })
}

impl Application {
    /// Connects, handles migrations as `--migrate` says ([`open_migrated`]), and binds.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        // Before the database: a configuration mistake is reported as itself.
        let api_key = std::env::var("STRIPE_API_KEY").ok();
        let stripe = settings.stripe.resolved(api_key.as_deref())?;
        let (db, _) = open_migrated(settings).await?;
        let listener =
            TcpListener::bind(&settings.bind)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.bind.clone(),
                    source,
                })?;
        let metrics = match settings.metrics_addr {
            Some(addr) => {
                let listener = bind_metrics(addr).await?;
                let metrics = Metrics::install()
                    .map_err(StartupError::MetricsRecorder)?
                    .with_database(db.clone(), pool_size(settings, db.get_database_backend()));
                Some((listener, metrics))
            }
            None => None,
        };
        let state = AppState {
            db,
            limits: Arc::new(settings.limits.clone()),
            stripe: Arc::new(stripe),
            request_timeout: settings.request_timeout(),
            body_read_timeout: settings.connections.body_read_timeout(),
            lock_timeout: settings.lock_timeout(),
            user_queue: UserQueue::default(),
            token_gate: TokenGate::new(
                settings.limits.token_concurrency,
                settings.limits.token_requests_per_sec,
                settings.lock_timeout(),
            ),
            unknown_tokens: UnknownTokens::default(),
            valid_tokens: Default::default(),
            peer_limit: PeerLimit::new(
                settings.limits.unknown_tokens_per_peer,
                settings.limits.trust_x_forwarded_for,
            ),
            health_probe: HealthProbe::default(),
        };
        let mut app_router = router(state.clone());
        if metrics.is_some() {
            // Outermost: every answer is counted with the status it went out with.
            app_router = app_router.layer(middleware::from_fn(crate::metrics::track_requests));
        }
        Ok(Self {
            listener,
            router: app_router,
            state,
            metrics,
            purge_every: (settings.purge_every_secs > 0)
                .then(|| Duration::from_secs(settings.purge_every_secs)),
            connections: ConnectionLimits::fitted(
                &settings.connections,
                settings.db_max_connections,
            ),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, StartupError> {
        self.listener.local_addr().map_err(StartupError::LocalAddr)
    }

    /// Where `/metrics` is served, when `METRICS_ADDR` is set.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, StartupError> {
        self.metrics
            .as_ref()
            .map(|(listener, _)| listener.local_addr().map_err(StartupError::LocalAddr))
            .transpose()
    }

    /// Serves until `shutdown` resolves, then lets requests in flight finish within
    /// `SHUTDOWN_GRACE_SECS` ([`crate::serve`]).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        if let Some(every) = self.purge_every {
            tokio::spawn(purge_periodically(self.state.clone(), every));
        }
        let metrics = match self.metrics {
            Some((listener, metrics)) => {
                Some(MetricsServer::serve(listener, metrics, &self.connections)?)
            }
            None => None,
        };
        serve::serve(self.listener, self.router, self.connections, shutdown).await;
        // Scrapeable while requests drain.
        if let Some(metrics) = metrics {
            metrics.stop().await;
        }
        Ok(())
    }
}

/// The retention purge inside the server. Safe beside other instances doing the same.
async fn purge_periodically(state: AppState, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let started = std::time::Instant::now();
        let result =
            crate::service::retention::purge_expired(&state.db, &state.limits, |_| {}).await;
        crate::metrics::purge(result.as_ref().ok().copied(), started.elapsed());
        match result {
            Ok(purged) if purged.removed > 0 => {
                tracing::info!(removed = purged.removed, "purged expired deleted sessions")
            }
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "retention purge failed; will retry"),
        }
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
    // Give load balancers a moment to notice; requests in flight still complete.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    /// A handler's panic is answered with our JSON 500; before, the connection was dropped
    /// with no answer.
    #[tokio::test]
    async fn a_panic_is_answered_with_a_json_500() {
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    let limit: Option<u64> = None;
                    // What an unchecked setting did in sea-query.
                    limit.map_or_else(|| panic!("boom"), |l| l.to_string())
                }),
            )
            .layer(CatchPanicLayer::custom(panic_answer));
        let request = Request::builder()
            .uri("/boom")
            .body(axum::body::Body::empty())
            .unwrap_or_default();
        let response = app.oneshot(request).await.unwrap_or_else(|e| match e {});
        assert_eq!(response.status(), 500);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(json["error"]["code"], "internal", "{json}");
    }
}
