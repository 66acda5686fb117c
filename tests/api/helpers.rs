//! `spawn_app`: a fresh database on the chosen backend and the API serving it on port 0.

use api::db::Pooler;
use api::settings::{MigrateMode, StripeSettings};
use api::stripe::signature::WebhookSecrets;
use api::{Application, Limits, Settings};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{Value, json};

use crate::support::{self, Backend, TestDb};

/// One test body, two tests: `<name>::postgres` and `<name>::mysql` (MariaDB). For what needs
/// row locks and a pool of more than one connection, which SQLite lacks (its pool has one);
/// each caller says what it needs them for. [`crate::on_every_backend`] adds SQLite.
#[macro_export]
macro_rules! on_row_locking_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name($crate::support::Backend::Postgres).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() { super::$name($crate::support::Backend::MySql).await }
        }
    )*};
}

/// The `billing` binary the tests run: `BILLING_BIN` if set (CI points it at the release
/// build), else the debug build cargo made for this test run.
pub fn billing_bin() -> std::path::PathBuf {
    std::env::var_os("BILLING_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_billing").into())
}

/// The signing secret in use, and the one being rotated out (shaped like Stripe's: whsec_ and
/// 32 characters, which the server requires).
pub const SECRET: &str = "whsec_testCurrentSecret0123456789abcdef";
pub const OLD_SECRET: &str = "whsec_testPreviousSecret0123456789abcde";

pub struct TestApp {
    pub address: String,
    /// Shared by the [`TestApp::sibling`]s serving the same database.
    pub db: std::sync::Arc<TestDb>,
    pub client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Like `spawn_app`, with `configure` changing the settings first.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(TestDb::new(backend).await, configure).await
}

/// Like `spawn_app_with`, on a database the test made.
pub async fn spawn_app_on(db: TestDb, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(&db.url);
    configure(&mut settings);
    let (address, stop) = start_server(&settings).await;
    TestApp {
        address,
        db: db.into(),
        client: Client::new(),
        stop: Some(stop),
    }
}

impl TestApp {
    /// The helpers for a server the test started itself (a `billing` process) at `address`.
    pub fn at(address: String, db: TestDb) -> Self {
        Self {
            address,
            db: db.into(),
            client: Client::new(),
            stop: None,
        }
    }

    /// The helpers for another server at `address` on the same database.
    pub fn sibling(&self, address: String) -> Self {
        Self {
            address,
            db: std::sync::Arc::clone(&self.db),
            client: Client::new(),
            stop: None,
        }
    }
}

/// The environment pointing a `billing` process at `db` as [`test_settings`] points an
/// in-process server: through the transaction-mode pooler, migrating on the direct URL, when
/// TEST_POSTGRES_POOLER_URL is set or `pooled` asks for it (PostgreSQL only), else directly.
pub fn database_env(db: &TestDb, pooled: bool) -> Vec<(&'static str, String)> {
    let through = match support::through_pooler(&db.url) {
        None if pooled && db.backend == Backend::Postgres => {
            Some(format!("{}/{}", support::pooler_url(), db.name))
        }
        through => through,
    };
    match through {
        Some(pooled) => vec![
            ("DATABASE_URL", pooled),
            ("MIGRATION_DATABASE_URL", db.url.clone()),
            ("DB_POOLER", "transaction".to_owned()),
        ],
        None => vec![("DATABASE_URL", db.url.clone())],
    }
}

/// Serves the API with `settings`; returns its address and the sender that stops it.
pub async fn start_server(settings: &Settings) -> (String, tokio::sync::oneshot::Sender<()>) {
    let app = Application::build(settings).await.expect("build app");
    let address = format!("http://{}", app.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    (address, stop)
}

/// The settings every test server starts from, for the database at `url`. With
/// TEST_POSTGRES_POOLER_URL set, a PostgreSQL server is reached the production way: through
/// the transaction-mode pooler there, and migrations on the direct URL.
pub fn test_settings(url: &str) -> Settings {
    let (database_url, migration_database_url, db_pooler) = match support::through_pooler(url) {
        Some(pooled) => (pooled, Some(url.into()), Pooler::Transaction),
        None => (url.to_owned(), None, Pooler::None),
    };
    Settings {
        bind: "127.0.0.1:0".to_owned(),
        metrics_addr: None,
        database_url: Some(database_url.into()),
        migration_database_url,
        db_pooler,
        database_schema: None,
        db_max_connections: 5,
        db_lock_timeout_ms: 2000,
        request_timeout_secs: 30,
        limits: Limits::default(),
        stripe: StripeSettings {
            webhook_secrets: WebhookSecrets::parse(&format!("{SECRET},{OLD_SECRET}"))
                .expect("two secrets"),
            webhook_tolerance_secs: 300,
            // The events the tests build say `"livemode": false`.
            mode: Some(api::stripe::mode::StripeMode::Test),
            pro_prices: Default::default(),
        },
        purge_every_secs: 0,
        connections: Default::default(),
        migrate: MigrateMode::OnStart,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestApp {
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{path}", self.address));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// The test's own connection (direct, not the server's pool), for calling services.
    pub fn service_db(&self) -> api::db::Db {
        api::db::Db::direct(self.db.db.clone())
    }

    /// A new user; returns their token.
    pub async fn user(&self, email: &str) -> String {
        let email = api::domain::Email::parse(email).expect("email");
        let (_, token) = api::service::accounts::create_user(&self.db.db, &email)
            .await
            .expect("create user");
        token
    }

    pub async fn put_session(&self, token: &str, id: &str, device: &str) -> Response {
        self.request(Method::PUT, &format!("/v1/sessions/{id}"), Some(token))
            .json(&json!({"device_name": device, "payload": {"tabs": [id], "n": 1}}))
            .send()
            .await
            .expect("PUT session")
    }

    pub async fn send(&self, method: Method, path: &str, token: &str) -> Response {
        self.request(method, path, Some(token))
            .send()
            .await
            .expect("request")
    }

    /// Just the status code of an authenticated request.
    pub async fn status(&self, method: Method, path: &str, token: &str) -> u16 {
        self.send(method, path, token).await.status().as_u16()
    }

    pub async fn json(&self, method: Method, path: &str, token: &str) -> (u16, Value) {
        let response = self.send(method, path, token).await;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Makes the user Pro (or not) the way Stripe sync will: by writing the billing columns.
    pub async fn set_subscription(&self, email: &str, status: &str) {
        self.db
            .exec(&format!(
                "UPDATE users SET subscription_status = '{status}', current_period_end = NULL \
                 WHERE email = '{email}'"
            ))
            .await;
    }

    /// Ages a deleted session, as if deleted `days` ago.
    pub async fn age_deletion(&self, client_id: &str, days: i64) {
        let at = chrono::Utc::now() - chrono::Duration::days(days);
        let stmt = self.db.stmt(
            "UPDATE synced_sessions SET deleted_at = $1 WHERE client_id = $2",
            vec![at.fixed_offset().into(), client_id.into()],
        );
        sea_orm::ConnectionTrait::execute_raw(&self.db.db, stmt)
            .await
            .expect("age deletion");
    }
}

/// The error code of a JSON error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

impl TestApp {
    /// Delivers `body` to the webhook with `signature` as the Stripe-Signature header.
    pub async fn deliver(&self, body: &str, signature: Option<&str>) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/webhooks/stripe", self.address))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        let response = request.send().await.expect("deliver");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Delivers an event signed the way Stripe signs it, now, with the current secret.
    pub async fn deliver_event(&self, event: &Value) -> (u16, Value) {
        let body = event.to_string();
        let header =
            api::stripe::signature::sign(body.as_bytes(), SECRET, chrono::Utc::now().timestamp());
        self.deliver(&body, Some(&header)).await
    }

    /// The billing columns of a user, as one line.
    pub async fn billing_row(&self, email: &str) -> String {
        self.db
            .texts(&format!(
                "SELECT concat_ws('|', coalesce(stripe_customer_id, '-'), coalesce(subscription_id, '-'), \
                 subscription_status, CASE WHEN current_period_end IS NULL THEN '-' ELSE 'set' END) \
                 FROM users WHERE email = '{email}'"
            ))
            .await
            .join("")
    }

    pub async fn user_id(&self, email: &str) -> i64 {
        let ids = self
            .db
            .texts(&format!("SELECT id FROM users WHERE email = '{email}'"))
            .await;
        ids[0].parse().expect("user id")
    }
}

/// A Stripe event envelope.
pub fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": kind, "created": created,
           "api_version": "2025-03-31.basil", "livemode": false,
           "data": {"object": object}})
}

pub fn checkout(id: &str, created: i64, user_id: i64, customer: &str, subscription: &str) -> Value {
    event(
        id,
        "checkout.session.completed",
        created,
        json!({
            "id": format!("cs_{id}"), "object": "checkout.session", "mode": "subscription",
            "client_reference_id": user_id.to_string(), "customer": customer,
            "subscription": subscription
        }),
    )
}

/// A subscription event; `basil` puts the period end on the items (API 2025-03-31+),
/// otherwise on the subscription (older API versions).
pub fn subscription(
    id: &str,
    kind: &str,
    created: i64,
    (customer, sub): (&str, &str),
    status: &str,
    period_end: i64,
    basil: bool,
) -> Value {
    let object = if basil {
        json!({"id": sub, "object": "subscription", "customer": customer, "status": status,
               "items": {"object": "list", "data": [
                   {"id": "si_1", "current_period_end": period_end - 86_400},
                   {"id": "si_2", "current_period_end": period_end}]}})
    } else {
        json!({"id": sub, "object": "subscription", "customer": customer, "status": status,
               "current_period_end": period_end,
               "items": {"object": "list", "data": [{"id": "si_1"}]}})
    };
    event(
        id,
        &format!("customer.subscription.{kind}"),
        created,
        object,
    )
}
