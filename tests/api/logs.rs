//! What the server prints: no password at any level, no client-made request id that is too
//! long or could forge a field, and a 503 once, at WARN.

use reqwest::Method;
use serde_json::Value;

use crate::binary::serve_with;
use crate::helpers::spawn_app;
use crate::support::{Backend, TestDb};

const PASSWORD: &str = "hunter2logpw";

/// `RUST_LOG=trace`: sea-orm's driver span around `connect` printed the options, the URL's
/// password included. On PostgreSQL (trust authentication: any password is accepted) and
/// MariaDB (a user of the test's own with that password).
async fn trace_logs_never_print_the_database_password(backend: Backend) {
    let db = TestDb::new(backend).await;
    let url = match backend {
        Backend::Postgres => db
            .url
            .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1),
        _ => {
            let user = format!("u{}", &db.name[2..12]);
            for sql in [
                format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'"),
                format!("GRANT ALL ON {}.* TO '{user}'@'%'", db.name),
            ] {
                db.exec(&sql).await;
            }
            db.url.replacen("root@", &format!("{user}:{PASSWORD}@"), 1)
        }
    };
    let server = serve_with(&[("DATABASE_URL", &url), ("RUST_LOG", "trace")]).await;
    if backend == Backend::MySql {
        db.exec(&format!("DROP USER IF EXISTS 'u{}'@'%'", &db.name[2..12]))
            .await;
    }
    let server = server.expect("server starts");
    let status = reqwest::get(format!("{}/healthz", server.address))
        .await
        .expect("healthz")
        .status();
    assert_eq!(status, 200);
    let lines = server.logs_until(|line| line.contains("finished processing request"));
    let printed = [server.started.clone(), lines].concat();
    assert!(printed.len() > 10, "trace logs: {printed:#?}");
    for line in printed {
        assert!(!line.contains(PASSWORD), "the password in: {line}");
    }
}

mod trace_logs_never_print_the_database_password {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::trace_logs_never_print_the_database_password(Backend::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        super::trace_logs_never_print_the_database_password(Backend::MySql).await
    }
}

/// A client's x-request-id that is too long, or holds characters that could pass for other
/// log fields, is replaced with one of ours; a usable one is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_request_ids_are_replaced() {
    let app = spawn_app(Backend::Sqlite).await;
    let long = "a".repeat(6000);
    for sent in [long.as_str(), "x level=ERROR", "id\"quoted", "é"] {
        let response = app
            .request(Method::GET, "/healthz", None)
            .header("x-request-id", sent)
            .send()
            .await
            .expect("healthz");
        let echoed = response.headers()["x-request-id"]
            .to_str()
            .expect("ASCII")
            .to_owned();
        assert_ne!(echoed, sent);
        assert!(
            echoed.len() == 36 && echoed.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "{echoed}"
        );
    }
    let response = app
        .request(Method::GET, "/healthz", None)
        .header("x-request-id", "lb-1234:abc/5")
        .send()
        .await
        .expect("healthz");
    assert_eq!(response.headers()["x-request-id"], "lb-1234:abc/5");
}

/// A 503 is logged once, at WARN: tower-http added an ERROR line for every 5xx, so an
/// expected `busy` or `not_configured` tripped error alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_logged_once_at_warn() {
    let server = serve_with(&[("STRIPE_WEBHOOK_SECRETS", ""), ("LOG_FORMAT", "json")])
        .await
        .expect("server starts");
    let response = reqwest::Client::new()
        .post(format!("{}/webhooks/stripe", server.address))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("deliver");
    assert_eq!(response.status(), 503);
    // tower-http's failure line came after the request's closing line: a second request's
    // closing line marks the end of the first's.
    let health = reqwest::get(format!("{}/healthz", server.address))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let mut finished = 0;
    let lines = server.logs_until(|line| {
        finished += usize::from(line.contains("finished processing request"));
        finished == 2
    });
    let levels: Vec<String> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|json| json["level"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        levels.iter().filter(|l| *l == "ERROR").count(),
        0,
        "{lines:#?}"
    );
    assert_eq!(
        levels.iter().filter(|l| *l == "WARN").count(),
        1,
        "{lines:#?}"
    );
}

/// A full pool on a healthy database is an expected 503 (`unavailable`, with Retry-After),
/// logged at WARN: before, it was an ERROR "database unavailable". One user's write holds the
/// only connection, waiting on a row the test locks; another user's read then waits out the
/// pool's acquire timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_is_logged_at_warn_not_error() {
    use sea_orm::{ConnectionTrait, TransactionTrait};

    let db = TestDb::new(Backend::Postgres).await;
    let server = serve_with(&[
        ("DATABASE_URL", &db.url),
        ("DB_MAX_CONNECTIONS", "1"),
        ("DB_LOCK_TIMEOUT_MS", "30000"),
        ("REQUEST_TIMEOUT_SECS", "60"),
        ("LOG_FORMAT", "json"),
    ])
    .await
    .expect("server starts");
    let mut tokens = Vec::new();
    for email in ["writer@example.com", "reader@example.com"] {
        let email = api::domain::Email::parse(email).expect("email");
        let (user, token) = api::service::accounts::create_user(&db.db, &email)
            .await
            .expect("user");
        tokens.push((user.id, token));
    }
    let holder = crate::support::connect(&db.url).await;
    let txn = holder.begin().await.expect("begin");
    txn.execute_unprepared(&format!(
        "SELECT id FROM users WHERE id = {} FOR UPDATE",
        tokens[0].0
    ))
    .await
    .expect("lock the writer's row");
    let client = reqwest::Client::new();
    let write = client
        .put(format!("{}/v1/sessions/held", server.address))
        .bearer_auth(&tokens[0].1)
        .json(&serde_json::json!({"device_name": "d", "payload": {}}))
        .send();
    let write = tokio::spawn(write);
    // Until the write waits on the row with the pool's only connection.
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
        db.name
    );
    for _ in 0..200 {
        if db.texts(&waiting).await[0] != "0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let read = client
        .get(format!("{}/v1/sessions", server.address))
        .bearer_auth(&tokens[1].1)
        .send()
        .await
        .expect("read");
    assert_eq!(read.status(), 503);
    assert!(read.headers().contains_key("retry-after"));
    let body: Value = read.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    txn.rollback().await.expect("release");
    let _ = write.await;
    let lines = server.logs_until(|line| line.contains("database unavailable"));
    let line = lines.last().map(String::as_str).unwrap_or("");
    let json: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    assert_eq!(json["level"], "WARN", "{line}");
    assert!(
        !lines.iter().any(|l| l.contains("\"level\":\"ERROR\"")),
        "{lines:#?}"
    );
}
