//! Every rejection by an extractor (query string, path, body) and a method a route does not
//! accept are answered in our JSON error shape. This happens before the database is asked
//! anything but the caller's token, so these run on SQLite.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{code, spawn_app};
use crate::support::Backend;

async fn error_of(response: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, content_type, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_query_string_is_answered_in_our_shape() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.user("ann@example.com").await;
    for path in [
        "/v1/sessions?limit=1&limit=2",
        "/v1/trash?cursor=a&cursor=b",
    ] {
        let (status, content_type, body) =
            error_of(app.send(Method::GET, path, &token).await).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(content_type.as_deref(), Some("application/json"), "{path}");
        assert_eq!(code(&body), "bad_request", "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("duplicate field"), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_path_is_answered_in_our_shape() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.user("ann@example.com").await;
    for (method, path) in [
        (Method::GET, "/v1/sessions/%FF"),
        (Method::DELETE, "/v1/sessions/%FF"),
        (Method::POST, "/v1/sessions/%FF/restore"),
    ] {
        let (status, content_type, body) =
            error_of(app.send(method.clone(), path, &token).await).await;
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(code(&body), "bad_request", "{method} {path}: {body}");
    }
    let response = app
        .request(Method::PUT, "/v1/sessions/%FF", Some(&token))
        .json(&json!({"device_name": "d", "payload": 1}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = error_of(response).await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_route_does_not_accept_is_405_in_our_shape_with_allow() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.user("ann@example.com").await;
    for (method, path, allowed) in [
        (Method::PATCH, "/v1/sessions", &["GET"][..]),
        (
            Method::POST,
            "/v1/sessions/phone",
            &["GET", "PUT", "DELETE"],
        ),
        (Method::GET, "/webhooks/stripe", &["POST"]),
    ] {
        let response = app.send(method.clone(), path, &token).await;
        let allow = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let (status, content_type, body) = error_of(response).await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(code(&body), "method_not_allowed", "{method} {path}: {body}");
        for m in allowed {
            assert!(allow.contains(m), "{method} {path}: Allow: {allow}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_missing_a_field_names_it() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.user("ann@example.com").await;
    for (sent, field) in [
        (json!({"payload": 1}), "device_name"),
        (json!({"device_name": "d"}), "payload"),
        (json!({"device_name": 5, "payload": 1}), "device_name"),
    ] {
        let response = app
            .request(Method::PUT, "/v1/sessions/phone", Some(&token))
            .json(&sent)
            .send()
            .await
            .unwrap();
        let (status, _, body) = error_of(response).await;
        assert_eq!(status, 422, "{sent}: {body}");
        assert_eq!(body["error"]["field"], field, "{sent}: {body}");
    }
}

/// An unknown field and a key given twice are named as sent (they were `"extra.extra"` and
/// `"body"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_with_an_unknown_or_repeated_key_names_it() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.user("ann@example.com").await;
    for (sent, field) in [
        (r#"{"device_name":"d","payload":1,"extra":1}"#, "extra"),
        (
            r#"{"device_name":"d","device_name":"e","payload":1}"#,
            "device_name",
        ),
    ] {
        let response = app
            .request(Method::PUT, "/v1/sessions/phone", Some(&token))
            .header("content-type", "application/json")
            .body(sent)
            .send()
            .await
            .unwrap();
        let (status, _, body) = error_of(response).await;
        assert_eq!(status, 422, "{sent}: {body}");
        assert_eq!(body["error"]["field"], field, "{sent}: {body}");
    }
}
