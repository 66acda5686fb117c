use reqwest::Method;
use serde_json::json;

use crate::helpers::{code, spawn_app, spawn_app_with};
use crate::support::{self, Backend};

crate::on_every_backend!(
    free_keeps_exactly_n_live_sessions,
    concurrent_creates_never_pass_the_limit,
    a_downgrade_keeps_sessions_readable_and_deletable,
    bad_input_is_answered_with_the_field_named,
);

async fn free_keeps_exactly_n_live_sessions(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("ann@example.com").await;
    for i in 0..3 {
        assert_eq!(
            app.put_session(&token, &format!("s{i}"), "d")
                .await
                .status(),
            201
        );
    }
    let (status, body) = {
        let r = app.put_session(&token, "s3", "d").await;
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 402);
    assert_eq!(code(&body), "tier_limit_reached");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 3")
    );
    // Updating an existing session at the limit is fine.
    assert_eq!(app.put_session(&token, "s0", "renamed").await.status(), 200);
    // Deleting one makes room.
    app.send(Method::DELETE, "/v1/sessions/s1", &token).await;
    assert_eq!(app.put_session(&token, "s3", "d").await.status(), 201);
    // Pro has no limit.
    app.set_subscription("ann@example.com", "trialing").await;
    for i in 4..10 {
        assert_eq!(
            app.put_session(&token, &format!("s{i}"), "d")
                .await
                .status(),
            201
        );
    }
    let (_, billing) = app.json(Method::GET, "/v1/billing", &token).await;
    assert_eq!(billing["tier"], "pro");
    assert_eq!(billing["stripe_linked"], false);
}

async fn concurrent_creates_never_pass_the_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("ann@example.com").await;
    let requests: Vec<_> = (0..8)
        .map(|i| {
            let request = app
                .request(Method::PUT, &format!("/v1/sessions/c{i}"), Some(&token))
                .json(&json!({"device_name": "d", "payload": i}));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.await.unwrap().unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![201, 201, 201, 402, 402, 402, 402, 402],
        "{statuses:?}"
    );
    assert_eq!(
        app.db
            .texts("SELECT count(*) FROM synced_sessions WHERE deleted_at IS NULL")
            .await,
        vec!["3"]
    );
}

async fn a_downgrade_keeps_sessions_readable_and_deletable(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("ann@example.com").await;
    app.set_subscription("ann@example.com", "active").await;
    for i in 0..5 {
        assert_eq!(
            app.put_session(&token, &format!("s{i}"), "d")
                .await
                .status(),
            201
        );
    }
    app.set_subscription("ann@example.com", "canceled").await;
    let (_, list) = app.json(Method::GET, "/v1/sessions", &token).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 5);
    assert_eq!(
        app.status(Method::GET, "/v1/sessions/s4", &token).await,
        200
    );
    assert_eq!(
        app.put_session(&token, "s4", "still syncing")
            .await
            .status(),
        200
    );
    assert_eq!(app.put_session(&token, "s5", "d").await.status(), 402);
    assert_eq!(
        app.status(Method::DELETE, "/v1/sessions/s0", &token).await,
        204
    );
    // Four live sessions, then three: at or over the Free limit, no restore.
    assert_eq!(
        app.status(Method::POST, "/v1/sessions/s0/restore", &token)
            .await,
        402
    );
    app.send(Method::DELETE, "/v1/sessions/s1", &token).await;
    assert_eq!(
        app.status(Method::POST, "/v1/sessions/s0/restore", &token)
            .await,
        402
    );
    // Two live: room for exactly one more.
    app.send(Method::DELETE, "/v1/sessions/s2", &token).await;
    assert_eq!(
        app.status(Method::POST, "/v1/sessions/s0/restore", &token)
            .await,
        200
    );
    assert_eq!(
        app.status(Method::POST, "/v1/sessions/s1/restore", &token)
            .await,
        402
    );
}

async fn bad_input_is_answered_with_the_field_named(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.limits.max_body_bytes = 2048).await;
    let token = app.user("ann@example.com").await;
    let put = |id: &str| app.request(Method::PUT, &format!("/v1/sessions/{id}"), Some(&token));

    let cases = [
        (
            put("a").json(&json!({"device_name": 3, "payload": 1})),
            422,
            Some("device_name"),
        ),
        (put("a").json(&json!({"payload": 1})), 422, None),
        (
            put("a").json(&json!({"device_name": "d", "payload": 1, "extra": true})),
            422,
            None,
        ),
        (
            put("a").json(&json!({"device_name": "x".repeat(256), "payload": 1})),
            422,
            Some("device_name"),
        ),
        (
            put("a").json(&json!({"device_name": "  ", "payload": 1})),
            422,
            Some("device_name"),
        ),
        // Control characters: PostgreSQL refused NUL with a 500; a name is one line.
        (
            put("a").json(&json!({"device_name": "a\u{0}b", "payload": 1})),
            422,
            Some("device_name"),
        ),
        (
            put("a").json(&json!({"device_name": "a\nb", "payload": 1})),
            422,
            Some("device_name"),
        ),
        (
            put("a").json(&json!({"device_name": "a\u{85}b", "payload": 1})),
            422,
            Some("device_name"),
        ),
        (
            put(&"x".repeat(101)).json(&json!({"device_name": "d", "payload": 1})),
            422,
            Some("client_id"),
        ),
        (
            put("a").json(&json!({"device_name": "d", "payload": "y".repeat(4000)})),
            413,
            None,
        ),
        (
            put("a")
                .header("content-type", "application/json")
                .body("{\"device_name\": "),
            400,
            None,
        ),
        (put("a").body("{}"), 415, None),
    ];
    for (i, (request, status, field)) in cases.into_iter().enumerate() {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "case {i}");
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert!(body["error"]["code"].is_string(), "case {i}: {body}");
        if let Some(field) = field {
            assert_eq!(body["error"]["field"], field, "case {i}: {body}");
        }
    }
    for query in [
        "limit=0",
        "limit=1000",
        "limit=abc",
        "cursor=xyz",
        "cursor=-4",
    ] {
        let (status, body) = app
            .json(Method::GET, &format!("/v1/sessions?{query}"), &token)
            .await;
        assert_eq!(status, 422, "{query}: {body}");
    }
    // Nothing half-written: the refused requests left no rows.
    assert_eq!(
        app.db.texts("SELECT count(*) FROM synced_sessions").await,
        vec!["0"]
    );
}
