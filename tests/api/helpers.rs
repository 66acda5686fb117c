//! `spawn_app`: a fresh database on the chosen backend and the API serving it on port 0.

use api::{Application, Limits, Settings};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{Value, json};

use crate::support::{Backend, TestDb};

pub struct TestApp {
    pub address: String,
    pub db: TestDb,
    pub client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, Limits::default()).await
}

pub async fn spawn_app_with(backend: Backend, limits: Limits) -> TestApp {
    let db = TestDb::new(backend).await;
    let settings = Settings {
        bind: "127.0.0.1:0".to_owned(),
        database_url: Some(db.url.clone()),
        db_max_connections: 5,
        limits,
    };
    let app = Application::build(&settings).await.expect("build app");
    let address = format!("http://{}", app.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        db,
        client: Client::new(),
        stop: Some(stop),
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
