//! Database faults are answered 503 with Retry-After, never 500 (api/src/db_fault.rs): a
//! restart and a crash of the server under load, and a database that turned read-only, which
//! `/healthz` reports so a load balancer drains the instance.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::helpers::{code, spawn_app, start_server, test_settings};
use crate::support::{self, Backend};
use crate::throwaway_mariadb::ThrowawayMariaDb;
use crate::throwaway_pg::{Stop, ThrowawayPg};

/// Every answer a client got during a fault: its status and, for a 503, whether it carried
/// Retry-After and its error code.
#[derive(Default)]
struct Answers {
    ok: usize,
    retryable: Vec<String>,
    wrong: Vec<String>,
    served_again: bool,
}

async fn classify(response: reqwest::Response, answers: &Mutex<Answers>) {
    let status = response.status();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let mut answers = answers.lock().await;
    if status.is_success() {
        answers.ok += 1;
    } else if status == StatusCode::SERVICE_UNAVAILABLE && retry_after {
        answers.retryable.push(code(&body).to_owned());
    } else {
        answers.wrong.push(format!("{status} {body}"));
    }
}

/// A fast restart and an immediate stop (a crash) of PostgreSQL while clients read and write:
/// each answer is a success or a 503 with Retry-After, and the API serves again once the
/// server is back. Before, requests caught by the fault answered 500 `internal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_or_crash_under_load_answers_503_not_500() {
    let pg = ThrowawayPg::start();
    let url = pg.url("postgres");
    let (address, _stop) = start_server(&load_settings(&url)).await;
    let token = user_token(&url, "load@example.com").await;
    for stop in [Stop::Fast, Stop::Immediate] {
        let answers = through_a_fault(&address, &token, async {
            pg.stop(stop);
            tokio::time::sleep(DOWN_LONGER_THAN_A_REQUEST).await;
            pg.pg_ctl_start();
        })
        .await;
        answers.assert_only_successes_and_retryable();
    }
}

/// MariaDB killed with SIGKILL under load, then started again (crash recovery): the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_kill_under_load_answers_503_not_500() {
    let mut mariadb = ThrowawayMariaDb::start().await;
    let root = support::connect(&mariadb.url("root", "mysql")).await;
    root.execute_unprepared("CREATE DATABASE billing")
        .await
        .expect("create database");
    let _ = root.close().await;
    let url = mariadb.url("root", "billing");
    let (address, _stop) = start_server(&load_settings(&url)).await;
    let token = user_token(&url, "load@example.com").await;
    let mariadb = &mut mariadb;
    let answers = through_a_fault(&address, &token, async move {
        mariadb.kill();
        tokio::time::sleep(DOWN_LONGER_THAN_A_REQUEST).await;
        mariadb.run().await;
    })
    .await;
    answers.assert_only_successes_and_retryable();
}

/// How long the database stays down: longer than `load_settings`' request timeout, so that a
/// request the fault catches is answered 503 even when it only waited for a connection (the
/// pool reconnects quietly once the server is back). With a 1 s window a loaded CI machine
/// once saw every request wait the fault out: no 503 at all, and "the fault was never met".
const DOWN_LONGER_THAN_A_REQUEST: Duration = Duration::from_secs(6);

/// Settings for a server under load: a short request timeout, room for a session per client.
fn load_settings(url: &str) -> api::Settings {
    let mut settings = test_settings(url);
    settings.request_timeout_secs = 5;
    settings.limits.free_session_limit = 100;
    settings
}

async fn user_token(url: &str, email: &str) -> String {
    let db = support::connect(url).await;
    let email = api::domain::Email::parse(email).expect("email");
    let (_, token) = api::service::accounts::create_user(&db, &email)
        .await
        .expect("create user");
    let _ = db.close().await;
    token
}

impl Answers {
    fn assert_only_successes_and_retryable(&self) {
        assert!(
            self.wrong.is_empty(),
            "answers other than success or 503 with Retry-After: {:?}",
            self.wrong
        );
        assert!(
            !self.retryable.is_empty(),
            "the fault was never met ({} successes)",
            self.ok
        );
        assert!(self.served_again, "not served after the restart");
    }
}

/// Eight clients read and write with `token` while `fault` runs; then waits until the API
/// serves again. Every answer, classified.
async fn through_a_fault(address: &str, token: &str, fault: impl Future<Output = ()>) -> Answers {
    let client = Client::new();
    let answers = Arc::new(Mutex::new(Answers::default()));
    let running = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (client, address, token) = (client.clone(), address.to_owned(), token.to_owned());
            let (answers, running) = (Arc::clone(&answers), Arc::clone(&running));
            tokio::spawn(async move {
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    n += 1;
                    let request = if n % 2 == 0 {
                        client.get(format!("{address}/v1/sessions"))
                    } else {
                        client
                            .put(format!("{address}/v1/sessions/c{i}"))
                            .json(&json!({"device_name": "d", "payload": {"n": n}}))
                    };
                    if let Ok(response) = request.bearer_auth(&token).send().await {
                        classify(response, &answers).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fault.await;
    // Served again once the server is back (generous: crash recovery and the pool's
    // reconnects; a hang fails here).
    let mut served_again = false;
    for _ in 0..150 {
        let response = client
            .get(format!("{address}/v1/sessions"))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        if response.status() == StatusCode::OK {
            served_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    let mut answers = Arc::try_unwrap(answers)
        .map(Mutex::into_inner)
        .unwrap_or_default();
    answers.served_again = served_again;
    answers
}

/// A database turned read-only (what a failover onto a replica does; here
/// `default_transaction_read_only`): writes answer 503 `read_only` with Retry-After, and
/// `/healthz` answers 503 `read_only` so a load balancer drains the instance. Before: 500 on
/// every write, and `/healthz` said `reachable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_postgres_answers_503_and_healthz_says_so() {
    let app = spawn_app(Backend::Postgres).await;
    let token = app.user("ro@example.com").await;
    assert_eq!(app.put_session(&token, "before", "d").await.status(), 201);
    let name = &app.db.name;
    app.db
        .exec(&format!(
            "ALTER DATABASE {name} SET default_transaction_read_only = on"
        ))
        .await;
    // The pool's connections started before the change; new ones are read-only.
    app.db
        .exec(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await;
    let mut codes = Vec::new();
    for _ in 0..20 {
        let response = app.put_session(&token, "after", "d").await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.expect("JSON error");
        codes.push(code(&body).to_owned());
        if code(&body) == "read_only" {
            break;
        }
        // A connection cut by the termination may answer `unavailable` once.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        codes.last().map(String::as_str),
        Some("read_only"),
        "{codes:?}"
    );
    assert_healthz_says_read_only(&app.address).await;
}

/// `/healthz` answers 503 with `database: read_only`, so a load balancer drains the instance.
async fn assert_healthz_says_read_only(address: &str) {
    let health = reqwest::get(format!("{address}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 503);
    let body: Value = health.json().await.expect("health JSON");
    assert_eq!(body["database"], "read_only", "{body}");
}

/// MariaDB's `read_only` (a replica, or a primary fenced during a failover): writes answer 503
/// `read_only`, `/healthz` 503 `read_only`. The API's account has no `READ ONLY ADMIN`
/// privilege (root's would let it write anyway), as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_mariadb_answers_503_and_healthz_says_so() {
    let mariadb = ThrowawayMariaDb::start().await;
    let root = support::connect(&mariadb.url("root", "mysql")).await;
    for sql in [
        "CREATE DATABASE billing",
        "CREATE USER 'app'@'%' IDENTIFIED BY 'app'",
        "GRANT ALL ON billing.* TO 'app'@'%'",
    ] {
        root.execute_unprepared(sql).await.expect(sql);
    }
    let url = mariadb.url("app:app", "billing");
    let (address, _stop) = start_server(&load_settings(&url)).await;
    let token = user_token(&url, "ro@example.com").await;
    let client = Client::new();
    let put = || {
        client
            .put(format!("{address}/v1/sessions/s"))
            .bearer_auth(&token)
            .json(&json!({"device_name": "d", "payload": {}}))
            .send()
    };
    assert_eq!(put().await.expect("PUT").status(), 201);
    root.execute_unprepared("SET GLOBAL read_only = 1")
        .await
        .expect("read_only");
    let response = put().await.expect("PUT");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(code(&body), "read_only", "{body}");
    assert_healthz_says_read_only(&address).await;
}
