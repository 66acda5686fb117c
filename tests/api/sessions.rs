use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{code, spawn_app};
use crate::support::{self, Backend};

crate::on_every_backend!(
    sync_creates_then_updates_the_same_session,
    pages_walk_every_session_once_while_new_ones_arrive,
    soft_delete_trash_and_restore,
    restore_is_refused_after_the_retention_window,
    an_expired_trashed_session_no_longer_blocks_its_client_id,
    the_payload_comes_back_exactly_as_sent,
);

/// The payload is stored as the JSON text sent, not re-encoded: an integer beyond 64 bits
/// (which a re-encoding turned into `1.2345678901234568e+29`), key order, number spelling and
/// whitespace inside it come back byte for byte, in the single and the listed session.
async fn the_payload_comes_back_exactly_as_sent(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("ann@example.com").await;
    let payload =
        r#"{"z": 123456789012345678901234567890, "a" : [1e5, 1.50, -0.0],"s":"\u00e9\u0000"}"#;
    let body = format!(r#"{{"device_name": "d", "payload": {payload}}}"#);
    let put = app
        .request(Method::PUT, "/v1/sessions/big", Some(&token))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    assert!(put.text().await.unwrap().contains(payload));
    for path in ["/v1/sessions/big", "/v1/sessions"] {
        let text = app
            .send(Method::GET, path, &token)
            .await
            .text()
            .await
            .unwrap();
        assert!(
            text.contains(&format!(r#""payload":{payload}"#)),
            "{path}: {text}"
        );
    }
    assert_eq!(
        app.db.texts("SELECT payload FROM synced_sessions").await,
        vec![payload]
    );
}

async fn sync_creates_then_updates_the_same_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("ann@example.com").await;
    let first = app.put_session(&token, "phone", "Pixel").await;
    assert_eq!(first.status(), 201);
    // A retry of the same sync is safe: it updates, it does not duplicate.
    let retry = app.put_session(&token, "phone", "Pixel").await;
    assert_eq!(retry.status(), 200);
    let update = app
        .request(Method::PUT, "/v1/sessions/phone", Some(&token))
        .json(&json!({"device_name": "Pixel 9", "payload": {"tabs": ["a", "b"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(update.status(), 200);
    let (status, body) = app.json(Method::GET, "/v1/sessions/phone", &token).await;
    assert_eq!(status, 200);
    assert_eq!(body["device_name"], "Pixel 9");
    assert_eq!(body["payload"], json!({"tabs": ["a", "b"]}));
    assert_eq!(body["deleted_at"], serde_json::Value::Null);
    let (_, list) = app.json(Method::GET, "/v1/sessions", &token).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

async fn pages_walk_every_session_once_while_new_ones_arrive(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("pro@example.com").await;
    app.set_subscription("pro@example.com", "active").await;
    let mut created = BTreeSet::new();
    for i in 0..25 {
        let id = format!("s{i:02}");
        assert_eq!(app.put_session(&token, &id, "d").await.status(), 201);
        created.insert(id);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sessions?limit=10&cursor={c}"),
            None => "/v1/sessions?limit=10".to_owned(),
        };
        let (status, body) = app.json(Method::GET, &path, &token).await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= 10);
        seen.extend(
            items
                .iter()
                .map(|s| s["client_id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        // New sessions arrive between pages, concurrently with the walk.
        let inserts: Vec<_> = (0..3)
            .map(|k| {
                let app_token = token.clone();
                let id = format!("new-{pages}-{k}");
                let request = app
                    .request(Method::PUT, &format!("/v1/sessions/{id}"), Some(&app_token))
                    .json(&json!({"device_name": "d", "payload": null}));
                tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        for insert in inserts {
            assert_eq!(insert.await.unwrap().unwrap(), 201);
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    // Newest first, each original exactly once; sessions created after the walk began sort
    // before its cursor, so they are never interleaved into later pages.
    let mut expected: Vec<String> = created.into_iter().collect();
    expected.reverse();
    assert_eq!(seen, expected);
}

async fn soft_delete_trash_and_restore(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("ann@example.com").await;
    app.put_session(&token, "tab", "Firefox").await;
    app.put_session(&token, "keep", "Chrome").await;

    assert_eq!(
        app.status(Method::DELETE, "/v1/sessions/tab", &token).await,
        204
    );
    assert_eq!(
        app.status(Method::DELETE, "/v1/sessions/tab", &token).await,
        204
    );
    assert_eq!(
        app.status(Method::DELETE, "/v1/sessions/never", &token)
            .await,
        404
    );
    assert_eq!(
        app.status(Method::GET, "/v1/sessions/tab", &token).await,
        404
    );
    let (_, live) = app.json(Method::GET, "/v1/sessions", &token).await;
    let live_ids: Vec<_> = live["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["client_id"].clone())
        .collect();
    assert_eq!(live_ids, vec![json!("keep")]);

    let (_, trash) = app.json(Method::GET, "/v1/trash", &token).await;
    let items = trash["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["client_id"], "tab");
    assert!(items[0]["deleted_at"].is_string());
    assert!(items[0]["purge_after"].is_string());

    // Syncing a trashed session is refused until it is restored.
    let (status, body) = (app.put_session(&token, "tab", "x").await.status(), ());
    assert_eq!(status, 409, "{body:?}");

    let (status, restored) = app
        .json(Method::POST, "/v1/sessions/tab/restore", &token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(restored["deleted_at"], serde_json::Value::Null);
    assert_eq!(
        app.status(Method::GET, "/v1/sessions/tab", &token).await,
        200
    );
    let (_, trash) = app.json(Method::GET, "/v1/trash", &token).await;
    assert!(trash["items"].as_array().unwrap().is_empty());
    // Restoring a live session is a no-op.
    assert_eq!(
        app.status(Method::POST, "/v1/sessions/tab/restore", &token)
            .await,
        200
    );
}

async fn restore_is_refused_after_the_retention_window(backend: Backend) {
    let app = spawn_app(backend).await;
    let free = app.user("free@example.com").await;
    app.put_session(&free, "inside", "d").await;
    app.put_session(&free, "outside", "d").await;
    for id in ["inside", "outside"] {
        app.send(Method::DELETE, &format!("/v1/sessions/{id}"), &free)
            .await;
    }
    app.age_deletion("inside", 6).await;
    app.age_deletion("outside", 8).await;
    assert_eq!(
        app.status(Method::POST, "/v1/sessions/inside/restore", &free)
            .await,
        200
    );
    let (status, body) = app
        .json(Method::POST, "/v1/sessions/outside/restore", &free)
        .await;
    assert_eq!(status, 404);
    assert_eq!(code(&body), "not_found");

    // Pro keeps 30 days.
    let pro = app.user("pro@example.com").await;
    app.set_subscription("pro@example.com", "active").await;
    app.put_session(&pro, "p8", "d").await;
    app.put_session(&pro, "p31", "d").await;
    for id in ["p8", "p31"] {
        app.send(Method::DELETE, &format!("/v1/sessions/{id}"), &pro)
            .await;
    }
    app.age_deletion("p8", 8).await;
    app.age_deletion("p31", 31).await;
    assert_eq!(
        app.status(Method::POST, "/v1/sessions/p8/restore", &pro)
            .await,
        200
    );
    assert_eq!(
        app.status(Method::POST, "/v1/sessions/p31/restore", &pro)
            .await,
        404
    );
}

fn client_ids(page: &serde_json::Value) -> Vec<String> {
    page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|s| s["client_id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// With the purge off (the default) a session past its window stays in the table. It is gone
/// for the user: not in the trash, not restorable, and its client id is free again. The
/// window is the owner's tier's, as the purge reads it.
async fn an_expired_trashed_session_no_longer_blocks_its_client_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let free = app.user("free@example.com").await;
    for id in ["expired", "recent", "also-expired"] {
        assert_eq!(app.put_session(&free, id, "old").await.status(), 201);
        app.send(Method::DELETE, &format!("/v1/sessions/{id}"), &free)
            .await;
    }
    app.age_deletion("expired", 8).await;
    app.age_deletion("also-expired", 8).await;

    // The trash lists only what can still be restored.
    let (status, trash) = app.json(Method::GET, "/v1/trash", &free).await;
    assert_eq!(status, 200, "{trash}");
    assert_eq!(client_ids(&trash), vec!["recent"]);
    let (_, one) = app.json(Method::GET, "/v1/trash?limit=1", &free).await;
    assert_eq!(client_ids(&one), vec!["recent"]);
    assert_eq!(one["next_cursor"], serde_json::Value::Null, "{one}");
    let (status, body) = app
        .json(Method::POST, "/v1/sessions/expired/restore", &free)
        .await;
    assert_eq!((status, code(&body)), (404, "not_found"));

    // A sync over the expired row starts the session anew.
    let response = app
        .request(Method::PUT, "/v1/sessions/expired", Some(&free))
        .json(&json!({"device_name": "new", "payload": {"fresh": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["device_name"], "new");
    assert_eq!(body["payload"], json!({"fresh": true}));
    assert_eq!(body["deleted_at"], serde_json::Value::Null);
    let (_, live) = app.json(Method::GET, "/v1/sessions", &free).await;
    assert_eq!(client_ids(&live), vec!["expired"]);
    assert_eq!(
        app.db
            .texts("SELECT count(*) FROM synced_sessions WHERE client_id = 'expired'")
            .await,
        vec!["1"]
    );
    // One still inside its window keeps its client id until restored.
    assert_eq!(app.put_session(&free, "recent", "x").await.status(), 409);

    // It counts against the Free limit like a create.
    app.put_session(&free, "two", "d").await;
    app.put_session(&free, "three", "d").await;
    assert_eq!(
        app.put_session(&free, "also-expired", "d").await.status(),
        402
    );

    // Pro keeps 30 days: eight days after deletion the session is still in the trash.
    let pro = app.user("pro@example.com").await;
    app.set_subscription("pro@example.com", "active").await;
    app.put_session(&pro, "p8", "d").await;
    app.put_session(&pro, "p31", "d").await;
    for id in ["p8", "p31"] {
        app.send(Method::DELETE, &format!("/v1/sessions/{id}"), &pro)
            .await;
    }
    app.age_deletion("p8", 8).await;
    app.age_deletion("p31", 31).await;
    let (_, trash) = app.json(Method::GET, "/v1/trash", &pro).await;
    assert_eq!(client_ids(&trash), vec!["p8"]);
    assert_eq!(app.put_session(&pro, "p8", "d").await.status(), 409);
    assert_eq!(app.put_session(&pro, "p31", "d").await.status(), 201);
}
