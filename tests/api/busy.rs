//! One user's locked row must not take the API down: lock waits are bounded, answered 503
//! with Retry-After, other users are served, and `/healthz` does not report a busy database
//! as down. Outcomes are asserted, not durations; the time bounds here only catch hangs.

use std::future::Future;
use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};
use crate::support::{self, Backend};

/// Generous: only a request that hangs takes this long.
const HANG: Duration = Duration::from_secs(90);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// What a support engineer's psql session, a stuck job or a long webhook does: holds the
/// user's row in an open transaction. SQLite locks the whole database for writing.
async fn hold_user_row(app: &TestApp, user_id: i64) -> DatabaseTransaction {
    let holder = support::connect(&app.db.url).await;
    let (options, sql) = match app.db.backend {
        Backend::Sqlite => (
            TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            },
            format!("UPDATE users SET updated_at = updated_at WHERE id = {user_id}"),
        ),
        _ => (
            TransactionOptions::default(),
            format!("SELECT id FROM users WHERE id = {user_id} FOR UPDATE"),
        ),
    };
    let txn = holder.begin_with_options(options).await.expect("begin");
    txn.execute_unprepared(&sql).await.expect("lock the row");
    txn
}

/// Asserts a retryable 503 in our error shape with `code`.
async fn assert_retryable(response: reqwest::Response, code: &str) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        response.headers().contains_key("retry-after"),
        "{:?}",
        response.headers()
    );
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
}

/// Statements on this database waiting for a row lock right now.
async fn lock_waiters(app: &TestApp) -> usize {
    let sql = match app.db.backend {
        Backend::Postgres => format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
            app.db.name
        ),
        // MariaDB lists a waiting statement as running; only the API's locking reads run long.
        _ => format!(
            "SELECT count(*) FROM information_schema.processlist WHERE db = '{}' \
             AND command <> 'Sleep' AND info LIKE '%FOR UPDATE%'",
            app.db.name
        ),
    };
    app.db.texts(&sql).await[0].parse().unwrap_or(0)
}

async fn one_users_locked_row_does_not_stall_the_api(backend: Backend) {
    let app = spawn_app(backend).await;
    let pool = 5; // spawn_app's DB_MAX_CONNECTIONS
    let a = app.user("a@example.com").await;
    let b = app.user("b@example.com").await;
    assert_eq!(app.put_session(&b, "laptop", "d").await.status(), 201);
    let a_id = app.user_id("a@example.com").await;
    let held = hold_user_row(&app, a_id).await;

    // Three times as many syncs for A as the pool has connections.
    let client = Client::new();
    let syncs: Vec<_> = (0..pool * 3)
        .map(|i| {
            let request = client
                .put(format!("{}/v1/sessions/s{i}", app.address))
                .bearer_auth(&a)
                .json(&json!({"device_name": "d", "payload": {}}));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    // Until one of them waits on A's row (the others queue without a connection).
    within("waiting for a sync to wait on the lock", async {
        while lock_waiters(&app).await < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // B is served.
    let (status, page) = within("B's list", app.json(Method::GET, "/v1/sessions", &b)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["client_id"], "laptop");

    // The instance is busy, not down.
    let health = within(
        "healthz",
        client.get(format!("{}/healthz", app.address)).send(),
    )
    .await
    .expect("healthz");
    let status = health.status();
    let body: Value = health.json().await.unwrap_or(Value::Null);
    assert_ne!(body["database"], "unreachable", "{status} {body}");
    assert_eq!(status, StatusCode::OK, "{body}");

    // A's syncs end, with a 503 the client can retry.
    for sync in syncs {
        let response = within("A's sync", sync)
            .await
            .expect("task")
            .expect("response");
        assert_retryable(response, "busy").await;
    }

    // Once the row is released, A syncs again.
    held.rollback().await.expect("release");
    assert_eq!(app.put_session(&a, "after", "d").await.status(), 201);
}

/// SQLite has one writer: another process's write transaction (a `purge-deleted` run, a
/// sqlite3 shell) makes a sync wait out the busy timeout, then answer a retryable 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_locked_sqlite_database_answers_busy() {
    let app = spawn_app(Backend::Sqlite).await;
    let a = app.user("a@example.com").await;
    let a_id = app.user_id("a@example.com").await;
    let held = hold_user_row(&app, a_id).await;
    let response = within("A's sync", async {
        app.request(Method::PUT, "/v1/sessions/s1", Some(&a))
            .json(&json!({"device_name": "d", "payload": {}}))
            .send()
            .await
            .expect("response")
    })
    .await;
    assert_retryable(response, "busy").await;
    held.rollback().await.expect("release");
    assert_eq!(app.put_session(&a, "after", "d").await.status(), 201);
}

/// A request that outlives REQUEST_TIMEOUT_SECS (here: a lock wait allowed to be longer) is
/// answered in our error shape, and its connection serves the next request.
async fn a_request_past_the_request_timeout_is_answered(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.db_lock_timeout_ms = 600_000;
        settings.request_timeout_secs = 1;
    })
    .await;
    let a = app.user("a@example.com").await;
    let a_id = app.user_id("a@example.com").await;
    let held = hold_user_row(&app, a_id).await;
    let response = within("A's sync", async {
        app.request(Method::PUT, "/v1/sessions/s1", Some(&a))
            .json(&json!({"device_name": "d", "payload": {}}))
            .send()
            .await
            .expect("response")
    })
    .await;
    assert_retryable(response, "timeout").await;
    held.rollback().await.expect("release");
    let status = within("A's next sync", app.put_session(&a, "after", "d"))
        .await
        .status();
    assert_eq!(status, 201);
}

/// However long the lock waits may be, one user's writes take one connection of the pool:
/// the rest of it serves everyone else.
async fn one_users_writes_take_one_connection(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.db_max_connections = 2;
        settings.db_lock_timeout_ms = 600_000;
        settings.request_timeout_secs = 3;
    })
    .await;
    let a = app.user("a@example.com").await;
    let b = app.user("b@example.com").await;
    let held = hold_user_row(&app, app.user_id("a@example.com").await).await;
    let client = Client::new();
    let syncs: Vec<_> = (0..3)
        .map(|i| {
            let request = client
                .put(format!("{}/v1/sessions/s{i}", app.address))
                .bearer_auth(&a)
                .json(&json!({"device_name": "d", "payload": {}}));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    within("waiting for a sync to wait on the lock", async {
        while lock_waiters(&app).await < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (status, page) = within("B's list", app.json(Method::GET, "/v1/sessions", &b)).await;
    assert_eq!(status, 200, "{page}");
    for sync in syncs {
        let response = within("A's sync", sync)
            .await
            .expect("task")
            .expect("response");
        assert_retryable(response, "timeout").await;
    }
    held.rollback().await.expect("release");
}

/// Every pooled connection waiting on a held row: `/healthz` answers at once that the
/// database is busy, with a 200 a load balancer keeps serving. Dropping the database (a real
/// outage) makes it 503 `unreachable`.
async fn healthz_tells_busy_from_down(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.db_max_connections = 2;
        settings.db_lock_timeout_ms = 600_000;
    })
    .await;
    // Two users' rows held: each one's syncs take one connection.
    let client = Client::new();
    let mut held = Vec::new();
    let mut syncs = Vec::new();
    for email in ["a@example.com", "c@example.com"] {
        let token = app.user(email).await;
        held.push(hold_user_row(&app, app.user_id(email).await).await);
        for i in 0..2 {
            let request = client
                .put(format!("{}/v1/sessions/s{i}", app.address))
                .bearer_auth(&token)
                .json(&json!({"device_name": "d", "payload": {}}));
            syncs.push(tokio::spawn(async move { request.send().await }));
        }
    }
    within("waiting for the syncs to take the pool", async {
        while lock_waiters(&app).await < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let health = within(
        "healthz",
        client.get(format!("{}/healthz", app.address)).send(),
    )
    .await
    .expect("healthz");
    assert_eq!(health.status(), StatusCode::OK);
    let body: Value = health.json().await.expect("JSON");
    assert_eq!(body["database"], "busy", "{body}");

    for txn in held {
        txn.rollback().await.expect("release");
    }
    for sync in syncs {
        let response = within("a sync", sync)
            .await
            .expect("task")
            .expect("response");
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    // sqlx hands a connection back to the pool from a task of its own after the response has
    // gone out, so the pool can still look full for a moment (seen on a loaded CI machine):
    // `busy` may linger briefly, `unreachable` never.
    within("healthz reachable once the rows are released", async {
        loop {
            let (status, body) = health_of(&client, &app).await;
            match (status, body["database"].as_str()) {
                (200, Some("reachable")) => break,
                (200, Some("busy")) => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("{other:?} {body}"),
            }
        }
    })
    .await;

    if backend == Backend::Postgres {
        app.db.exec("SELECT 1").await;
        let admin = support::connect(&format!("{}/postgres", support::server_url(backend))).await;
        admin
            .execute_unprepared(&format!("DROP DATABASE {} WITH (FORCE)", app.db.name))
            .await
            .expect("drop the database");
        let (status, body) = health_of(&client, &app).await;
        assert_eq!(
            (status, body["database"].as_str()),
            (503, Some("unreachable"))
        );
    }
}

/// A TCP proxy between the API and the database that the test can freeze: frozen, it still
/// accepts connections but forwards nothing either way, as a hung server, a dead host behind
/// a live load balancer or a partitioned network would.
struct Proxy {
    address: String,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address").to_string();
        let (frozen, thawed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut thawed = thawed.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if thawed.wait_for(|frozen| !frozen).await.is_err() {
                        return;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (from_client, to_client) = client.into_split();
                    let (from_server, to_server) = server.into_split();
                    tokio::join!(
                        forward(from_client, to_server, thawed.clone()),
                        forward(from_server, to_client, thawed),
                    );
                });
            }
        });
        Self { address, frozen }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

/// Copies `from` to `to`, holding what it read while the proxy is frozen.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut thawed: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if thawed.wait_for(|frozen| !frozen).await.is_err()
            || to.write_all(&buffer[..n]).await.is_err()
        {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The database stops answering while requests keep coming: they hold every pooled connection
/// waiting for it, and `/healthz` must call it `unreachable` (503), not `busy` (200), or a
/// load balancer keeps a dead instance in service. Once it answers again, so does `/healthz`.
async fn healthz_calls_a_database_that_stopped_answering_unreachable(backend: Backend) {
    // The server the API reaches: the database, or the pooler in front of it.
    let db = support::TestDb::new(backend).await;
    let reached = crate::helpers::test_settings(&db.url)
        .database_url()
        .map(str::to_owned)
        .expect("a database URL");
    let upstream = reached
        .rsplit_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(host, _)| host.to_owned())
        .expect("host:port in the server URL");
    let proxy = Proxy::start(upstream.clone()).await;
    let app = crate::helpers::spawn_app_on(db, |settings| {
        settings.database_url = settings.database_url.as_ref().map(|url| {
            url.expose_secret()
                .replacen(&upstream, &proxy.address, 1)
                .into()
        });
        settings.db_max_connections = 2;
        settings.request_timeout_secs = 5;
    })
    .await;
    // Created directly, not through the proxy.
    let token = app.user("a@example.com").await;
    let client = Client::new();
    let (status, body) = health_of(&client, &app).await;
    assert_eq!(
        (status, body["database"].as_str()),
        (200, Some("reachable"))
    );

    proxy.freeze(true);
    // Traffic that keeps every pooled connection waiting on the database.
    let traffic: Vec<_> = (0..4)
        .map(|_| {
            let request = client
                .get(format!("{}/v1/sessions", app.address))
                .bearer_auth(&token);
            tokio::spawn(async move {
                loop {
                    if let Some(request) = request.try_clone() {
                        let _ = request.send().await;
                    }
                }
            })
        })
        .collect();
    // Long enough for the requests to take both connections (assumed, not asserted).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        let (status, body) = health_of(&client, &app).await;
        assert_eq!(
            (status, body["database"].as_str()),
            (503, Some("unreachable")),
            "{body}"
        );
    }

    proxy.freeze(false);
    within("healthz once the database answers again", async {
        loop {
            let (status, body) = health_of(&client, &app).await;
            if status == 200 {
                assert!(
                    matches!(body["database"].as_str(), Some("reachable" | "busy")),
                    "{body}"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    for task in traffic {
        task.abort();
    }
}

async fn health_of(client: &Client, app: &TestApp) -> (u16, Value) {
    let response = within(
        "healthz",
        client.get(format!("{}/healthz", app.address)).send(),
    )
    .await
    .expect("healthz");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

// PostgreSQL and MariaDB: row locks and a pool of connections. (SQLite has one connection,
// and a sync that meets another writer gives up at once inside its transaction, as the test
// above shows, so nothing there waits long enough for the request timeout.)
crate::on_row_locking_backends!(
    one_users_locked_row_does_not_stall_the_api,
    a_request_past_the_request_timeout_is_answered,
    healthz_tells_busy_from_down,
    healthz_calls_a_database_that_stopped_answering_unreachable,
    one_users_writes_take_one_connection,
);
