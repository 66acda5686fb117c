//! What a session stores, byte for byte, on every backend: client ids that differ only by
//! case, and payloads of every size the server accepts.

use reqwest::Method;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

use crate::helpers::{code, spawn_app, spawn_app_with, test_settings};
use crate::support::{self, Backend, TestDb};

crate::on_every_backend!(
    client_ids_differing_by_case_are_two_sessions,
    a_body_under_the_cap_is_stored_as_sent,
    a_raised_body_cap_stores_payloads_over_64_kib,
);

async fn client_ids_differing_by_case_are_two_sessions(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("ann@example.com").await;
    let put = |id: &'static str, device: &'static str| {
        app.request(Method::PUT, &format!("/v1/sessions/{id}"), Some(&token))
            .json(&json!({"device_name": device, "payload": {"from": device}}))
            .send()
    };
    assert_eq!(put("Laptop", "work").await.unwrap().status(), 201);
    assert_eq!(put("laptop", "home").await.unwrap().status(), 201);
    for (id, device) in [("Laptop", "work"), ("laptop", "home")] {
        let (status, body) = app
            .json(Method::GET, &format!("/v1/sessions/{id}"), &token)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["client_id"], id, "{body}");
        assert_eq!(body["payload"], json!({"from": device}), "{body}");
    }
    let (_, list) = app.json(Method::GET, "/v1/sessions", &token).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
}

/// A body just under MAX_BODY_BYTES is stored as sent: `1e5` stays `1e5`. (Re-encoded, it
/// was `100000.0`, and the stored form outgrew the body cap.)
async fn a_body_under_the_cap_is_stored_as_sent(backend: Backend) {
    let app = spawn_app(backend).await;
    let cap = api::Limits::default().max_body_bytes;
    let token = app.user("ann@example.com").await;
    let prefix = r#"{"device_name":"d","payload":"#;
    let numbers = (cap - prefix.len() - 3) / 4;
    let payload = format!("[{}]", vec!["1e5"; numbers].join(","));
    let body = format!("{prefix}{payload}}}");
    assert!(body.len() <= cap && body.len() > cap - 8, "{}", body.len());

    let response = app
        .request(Method::PUT, "/v1/sessions/grows", Some(&token))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        app.db.texts("SELECT payload FROM synced_sessions").await,
        vec![payload.clone()],
        "payload changed"
    );
    let text = app
        .send(Method::GET, "/v1/sessions/grows", &token)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains(&payload), "payload changed on the way out");
}

/// MAX_BODY_BYTES raised past MySQL's old TEXT limit (65,535 bytes): stored on every backend;
/// on MySQL, a payload past MEDIUMTEXT's 16 MiB is refused with our JSON error, not a 500.
async fn a_raised_body_cap_stores_payloads_over_64_kib(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.limits.max_body_bytes = 20_000_000).await;
    let token = app.user("ann@example.com").await;
    let put = |payload: Value| {
        app.request(Method::PUT, "/v1/sessions/big", Some(&token))
            .json(&json!({"device_name": "d", "payload": payload}))
            .send()
    };
    let big = "x".repeat(100_000);
    assert_eq!(put(json!(big.clone())).await.unwrap().status(), 201);
    let (_, stored) = app.json(Method::GET, "/v1/sessions/big", &token).await;
    assert_eq!(stored["payload"], json!(big));

    if backend == Backend::MySql {
        let response = put(json!("y".repeat(16_777_216))).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(matches!(status, 413 | 422), "{status}: {body}");
        assert_eq!(body["error"]["field"], "payload", "{body}");
        assert!(!code(&body).is_empty(), "{body}");
        // The session kept its previous payload.
        let (_, stored) = app.json(Method::GET, "/v1/sessions/big", &token).await;
        assert_eq!(stored["payload"], json!(big));
    }
}

/// The API opens the database as the migrator does: in `public` unless DATABASE_SCHEMA says
/// otherwise, even when a schema named after the role (`postgres` here) exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_works_in_the_chosen_schema_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    t.exec("CREATE SCHEMA postgres").await;
    t.exec("CREATE SCHEMA tenant").await;
    for (chosen, expected) in [(None, "public"), (Some("tenant"), "tenant")] {
        let mut settings = test_settings(&t.url);
        settings.database_schema = chosen.map(str::to_owned);
        let (db, _) = api::startup::open_migrated(&settings)
            .await
            .expect("open and migrate");
        // The API's own statements, too (through a pooler, on whichever server connection).
        for _ in 0..5 {
            let row = db
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT current_schema()::text",
                ))
                .await
                .expect("current_schema()")
                .expect("one row");
            let schema: String = row.try_get_by_index(0).expect("text");
            assert_eq!(schema, expected);
        }
        let _ = db.close().await;
        let tables = |schema: &str| {
            format!(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema = '{schema}' AND table_name = 'synced_sessions'"
            )
        };
        assert_eq!(t.texts(&tables(expected)).await, vec!["1"], "{expected}");
        assert_eq!(t.texts(&tables("postgres")).await, vec!["0"]);
    }
}
