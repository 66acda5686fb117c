//! The SQL floor of an API request: the statements the API's own code executes, recorded on
//! a connection that keeps every statement, then replayed as plain statements with other ids.
//! Recording rather than writing them by hand keeps the floor true when the API changes.

use std::sync::{Arc, Mutex};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbErr, IsolationLevel, Statement, TransactionOptions,
    TransactionTrait, Value, Values,
};

use crate::load;

/// Connections in the API's pool and in each same-size pool the floor is measured on.
pub const POOL: u32 = 16;

/// The API as `webhooks` and `sync` serve it: a pool of [`POOL`], migrations on start, no
/// purge job, the default limits.
pub fn api_settings(
    url: &str,
    webhook_secrets: api::stripe::signature::WebhookSecrets,
) -> api::Settings {
    api::Settings {
        bind: "127.0.0.1:0".to_owned(),
        metrics_addr: None,
        database_url: Some(url.into()),
        migration_database_url: None,
        db_pooler: api::db::Pooler::None,
        database_schema: None,
        db_max_connections: POOL,
        db_lock_timeout_ms: 2000,
        request_timeout_secs: 30,
        limits: api::Limits::default(),
        stripe: api::settings::StripeSettings {
            webhook_secrets,
            webhook_tolerance_secs: 300,
            // The events the benchmarks build say `"livemode": false`.
            mode: Some(api::stripe::mode::StripeMode::Test),
            pro_prices: Default::default(),
        },
        purge_every_secs: 0,
        connections: Default::default(),
        migrate: api::settings::MigrateMode::OnStart,
    }
}

/// A connection that records every statement run through it.
pub struct Recorder {
    pub db: DatabaseConnection,
    recorded: Arc<Mutex<Vec<Statement>>>,
}

impl Recorder {
    pub async fn open(url: &str, connections: u32) -> Result<Self, String> {
        let mut db = load::connect(url, connections).await?;
        let recorded: Arc<Mutex<Vec<Statement>>> = Arc::default();
        let sink = recorded.clone();
        db.set_metric_callback(move |info| {
            if let Ok(mut all) = sink.lock() {
                all.push(info.statement.clone());
            }
        });
        Ok(Self { db, recorded })
    }

    /// What was recorded since the last call.
    pub fn take(&self) -> Vec<Statement> {
        self.recorded
            .lock()
            .map(|mut all| std::mem::take(&mut *all))
            .unwrap_or_default()
    }
}

/// `template` with every bound value equal to a swap's first replaced by its second.
pub fn substitute(template: &[Statement], swaps: &[(Value, Value)]) -> Vec<Statement> {
    let swap = |v: &Value| {
        swaps
            .iter()
            .find(|(from, _)| from == v)
            .map_or_else(|| v.clone(), |(_, to)| to.clone())
    };
    template
        .iter()
        .map(|s| Statement {
            sql: s.sql.clone(),
            values: s
                .values
                .as_ref()
                .map(|v| Values(v.0.iter().map(swap).collect())),
            db_backend: s.db_backend,
        })
        .collect()
}

/// How a request's statements are grouped: the first `outside` run on their own (like an
/// authentication lookup), the rest in one transaction when `transaction` says so.
#[derive(Clone, Copy)]
pub struct Shape {
    pub outside: usize,
    pub transaction: Option<Option<IsolationLevel>>,
}

/// Runs `statements` as `shape` groups them, through the same driver the API uses.
pub async fn replay(
    db: &DatabaseConnection,
    statements: &[Statement],
    shape: Shape,
) -> Result<(), DbErr> {
    let (outside, inside) = statements.split_at(shape.outside.min(statements.len()));
    for s in outside {
        db.execute_raw(s.clone()).await?;
    }
    let Some(isolation_level) = shape.transaction else {
        for s in inside {
            db.execute_raw(s.clone()).await?;
        }
        return Ok(());
    };
    let txn = db
        .begin_with_options(TransactionOptions {
            isolation_level,
            ..Default::default()
        })
        .await?;
    for s in inside {
        txn.execute_raw(s.clone()).await?;
    }
    txn.commit().await
}

/// The first line of each statement, for the report.
pub fn describe(statements: &[Statement]) {
    for s in statements {
        let sql: String = s.sql.chars().take(120).collect();
        println!("    {sql}");
    }
}

/// The API's router served in-process on a pool of our choosing (the real server,
/// `api::Application`, opens its own).
pub struct ApiServer {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    server: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// `nodelay`: answer with TCP_NODELAY set on each connection (Nagle's algorithm off),
    /// which `axum::serve` leaves to the caller.
    pub async fn start(
        db: api::db::Db,
        settings: &api::Settings,
        nodelay: bool,
    ) -> Result<Self, String> {
        use axum::serve::ListenerExt;
        let state = api::AppState {
            db,
            limits: Arc::new(settings.limits.clone()),
            stripe: Arc::new(settings.stripe.clone()),
            request_timeout: settings.request_timeout(),
            body_read_timeout: settings.connections.body_read_timeout(),
            lock_timeout: settings.lock_timeout(),
            user_queue: Default::default(),
            token_gate: api::token_gate::TokenGate::new(
                settings.limits.token_concurrency,
                settings.limits.token_requests_per_sec,
                settings.lock_timeout(),
            ),
            unknown_tokens: Default::default(),
            valid_tokens: Default::default(),
            peer_limit: api::token_gate::PeerLimit::new(
                settings.limits.unknown_tokens_per_peer,
                settings.limits.trust_x_forwarded_for,
            ),
            health_probe: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let base = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let router = api::startup::router(state);
        let server = if nodelay {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            })
        } else {
            tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            })
        };
        Ok(Self { base, server })
    }

    pub fn stop(self) {
        self.server.abort();
    }
}

/// The API's router served on a [`Recorder`]: every statement a request executes, the
/// extractors' and middleware's included, is recorded.
pub struct RecordingServer {
    pub recorder: Recorder,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    server: ApiServer,
}

impl RecordingServer {
    pub async fn start(url: &str, settings: &api::Settings) -> Result<Self, String> {
        let recorder = Recorder::open(url, 2).await?;
        let server =
            ApiServer::start(api::db::Db::direct(recorder.db.clone()), settings, false).await?;
        Ok(Self {
            recorder,
            base: server.base.clone(),
            server,
        })
    }

    pub async fn stop(self) {
        self.server.stop();
        let _ = self.recorder.db.close().await;
    }
}
