//! Building the application: database, migrations, router, listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use migration::connect::{self, DatabaseUrl, Failure};
use sea_orm::{DatabaseConnection, DbBackend};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::error::ApiError;
use crate::routes;
use crate::settings::{Limits, Settings, StripeSettings};

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub limits: Arc<Limits>,
    pub stripe: Arc<StripeSettings>,
}

/// Every route, with request ids, tracing and the body cap.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .merge(routes::health::router())
        .merge(routes::openapi::router())
        .merge(routes::billing::router())
        .merge(routes::sessions::router())
        .merge(routes::webhooks::router())
        .fallback(|| async { ApiError::NotFound("no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            ServiceBuilder::new()
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
                        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

/// Opens the database named by the settings (or the embedded SQLite default).
pub async fn open_database(
    settings: &Settings,
) -> Result<(DatabaseConnection, DatabaseUrl), Failure> {
    let url = migration::cli::resolve_url(settings.database_url.as_deref())?;
    // SQLite allows one writer at a time; a single connection makes requests queue instead
    // of failing with "database is locked".
    let max = if url.backend == DbBackend::Sqlite {
        1
    } else {
        settings.db_max_connections.max(1)
    };
    let db = connect::open(
        &url,
        settings.database_schema.as_deref(),
        connect::DEFAULT_CONNECT_TIMEOUT,
        max,
    )
    .await?;
    Ok((db, url))
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    purge_every: Option<Duration>,
}

impl Application {
    /// Connects, applies pending migrations under the migrator's lock, and binds.
    pub async fn build(settings: &Settings) -> Result<Self, Failure> {
        let (db, url) = open_database(settings).await?;
        migration::cli::migrate_up(&db, &url).await?;
        let listener = TcpListener::bind(&settings.bind)
            .await
            .map_err(|e| Failure(format!("cannot listen on {}: {e}", settings.bind)))?;
        let state = AppState {
            db,
            limits: Arc::new(settings.limits.clone()),
            stripe: Arc::new(settings.stripe.clone()),
        };
        Ok(Self {
            listener,
            router: router(state.clone()),
            state,
            purge_every: (settings.purge_every_secs > 0)
                .then(|| Duration::from_secs(settings.purge_every_secs)),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, Failure> {
        self.listener
            .local_addr()
            .map_err(|e| Failure(format!("cannot read the bound address: {e}")))
    }

    /// Serves until `shutdown` resolves, then lets requests in flight finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Failure> {
        if let Some(every) = self.purge_every {
            tokio::spawn(purge_periodically(self.state.clone(), every));
        }
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Failure(format!("server error: {e}")))
    }
}

/// The retention purge inside the server. Safe beside other instances doing the same.
async fn purge_periodically(state: AppState, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let result = crate::service::retention::purge_expired(
            &state.db,
            &state.limits,
            chrono::Utc::now(),
            |_| {},
        )
        .await;
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
