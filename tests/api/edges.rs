//! The edges of issue 19 §1.6: every rejection in the JSON error shape, bad settings refused
//! at start, ids and names that cannot be reached or displayed honestly, encodings we do not
//! decode, and one answer for a session that is gone.

use reqwest::Method;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binary::{billing, serve_with};
use crate::connections::{host, read_answer};
use crate::helpers::{code, spawn_app};
use crate::support::{self, Backend};

/// A webhook body over its 1 MiB cap: 413 in our shape (before: axum's plain text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_webhook_body_is_answered_in_json() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = format!("{{\"pad\": \"{}\"}}", "x".repeat(1_100_000));
    let (status, answer) = app.deliver(&body, Some("t=1,v1=00")).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(code(&answer), "payload_too_large", "{answer}");
}

/// A body that ends before its Content-Length (the client hung up): 400 in our shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_webhook_body_is_answered_in_json() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut stream = TcpStream::connect(host(&app.address))
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\": 1",
        )
        .await
        .expect("head and part of the body");
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("an answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let body: Value = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    assert_eq!(code(&body), "bad_request", "{answer}");
}

/// The whole answer to `sent` on a new connection, which the server closes after refusing
/// it: the head, and the body as JSON (null if it is not).
async fn refusal_of(address: &str, sent: &[u8]) -> (String, Value) {
    let mut stream = TcpStream::connect(host(address)).await.expect("connect");
    stream.write_all(sent).await.expect("send");
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> (String, Value) {
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers and closes")
    .expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.to_owned(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn assert_json_refusal(head: &str, body: &Value, status: u16, expected_code: &str) {
    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: application/json\r\n"),
        "{head}"
    );
    assert_eq!(code(body), expected_code, "{head}\n{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// A head hyper cannot parse (a space in a header name) was answered 400 with an empty body,
/// written by hyper before any of our code ran: now in our shape (api/src/own_answers.rs).
/// These run `billing` itself, so CI runs them on the release build too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_refusals_a_malformed_head_is_answered_in_json() {
    let server = serve_with(&[]).await.expect("server starts");
    for sent in [
        &b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n"[..],
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x01\x02\x03 nonsense\r\n\r\n",
    ] {
        let (head, body) = refusal_of(&server.address, sent).await;
        assert_json_refusal(&head, &body, 400, "bad_request");
    }
}

/// A head over MAX_HEADER_BYTES (431) was answered with an empty body. Exactly the limit is
/// sent, with no end of head: the server reads all of it, so closing sends no reset that
/// could lose the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_refusals_an_oversized_head_is_answered_in_json() {
    let limit = 8_192;
    let server = serve_with(&[("MAX_HEADER_BYTES", &limit.to_string())])
        .await
        .expect("server starts");
    let mut sent = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    sent.resize(limit, b'a');
    let (head, body) = refusal_of(&server.address, &sent).await;
    assert_json_refusal(&head, &body, 431, "header_too_large");
}

/// A request target over hyper's 65,534 bytes is refused with 414, in our shape. The head
/// must fit MAX_HEADER_BYTES to be parsed at all (over it, the answer is 431), so the limit is
/// raised above the target; the whole head is sent, so the server reads all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_refusals_an_overlong_target_is_answered_in_json() {
    let server = serve_with(&[("MAX_HEADER_BYTES", "131072")])
        .await
        .expect("server starts");
    let mut sent = b"GET /v1/sessions/".to_vec();
    sent.resize(70_000, b'a');
    sent.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = refusal_of(&server.address, &sent).await;
    assert_json_refusal(&head, &body, 414, "uri_too_long");
}

/// A malformed head after a request already served on the same connection is refused in our
/// shape too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_refusals_on_a_kept_alive_connection_are_json_too() {
    let server = serve_with(&[]).await.expect("server starts");
    let mut stream = TcpStream::connect(host(&server.address))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("a request");
    let (status, _) = read_answer(&mut stream, std::time::Duration::from_secs(30)).await;
    assert_eq!(status, 200);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n")
        .await
        .expect("a malformed one");
    let (head, body) = read_to_close(&mut stream).await;
    assert_json_refusal(&head, &body, 400, "bad_request");
}

/// MAX_PAGE_SIZE 0 emptied every list, and huge values panicked in sea-query or overflowed
/// `limit + 1`: refused at start with one line naming it.
#[test]
fn max_page_size_is_checked_at_start() {
    for value in ["0", "1001", "18446744073709551615"] {
        let dir = std::env::temp_dir().join(format!("billing-{}", support::random_name()));
        let url = format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display());
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut child = billing(&[
            ("MAX_PAGE_SIZE", value),
            ("BIND_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", &url),
        ])
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run billing");
        // A server that starts instead of refusing is stopped, and the test fails.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().expect("wait").is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let output = child.wait_with_output().expect("output");
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{value}: {text}");
        assert!(
            text.contains("MAX_PAGE_SIZE") || text.contains("max-page-size"),
            "{text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
}

/// `.` and `..` are refused as client ids: a client's URL library turns
/// `/v1/sessions/..` into `/v1/`, so such a session could never be read or deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_refused_as_client_ids() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.user("dots@example.com").await;
    // Sent as is: reqwest's URL parser would remove the dot segments itself.
    for id in [".", "..", "%2E", "%2E%2E", ".%2e"] {
        let body = r#"{"device_name": "d", "payload": {}}"#;
        let mut stream = TcpStream::connect(host(&app.address))
            .await
            .expect("connect");
        let request = format!(
            "PUT /v1/sessions/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("PUT");
        let (status, body) = read_answer(&mut stream, std::time::Duration::from_secs(30)).await;
        assert_eq!(status, 422, "{id}: {body}");
        assert_eq!(body["error"]["field"], "client_id", "{body}");
    }
    // Three dots, and dots among other characters, are ordinary ids.
    assert_eq!(app.put_session(&token, "...", "d").await.status(), 201);
    assert_eq!(app.put_session(&token, "a..b", "d").await.status(), 201);
}

/// Line separators and bidirectional controls in a device name are refused on every backend.
async fn device_names_refuse_separators_and_bidi_controls(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("bidi@example.com").await;
    for name in [
        "a\u{2028}b",
        "a\u{2029}b",
        "laptop\u{202E}cod.exe",
        "x\u{2066}y",
    ] {
        let response = app.put_session(&token, "s", name).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 422, "{name:?}: {body}");
        assert_eq!(body["error"]["field"], "device_name", "{body}");
    }
    assert_eq!(
        app.put_session(&token, "s", "Ann’s laptop").await.status(),
        201
    );
}

/// A gzip-encoded body was read as if plain; nothing here decodes one: 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_body_is_refused_with_415() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.user("gzip@example.com").await;
    for encoding in ["gzip", "br", "identity, gzip"] {
        let response = app
            .request(Method::PUT, "/v1/sessions/z", Some(&token))
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(r#"{"device_name": "d", "payload": {}}"#)
            .send()
            .await
            .expect("PUT");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 415, "{encoding}: {body}");
        assert_eq!(code(&body), "unsupported_media_type", "{body}");
    }
    let plain = app
        .request(Method::PUT, "/v1/sessions/z", Some(&token))
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .body(r#"{"device_name": "d", "payload": {}}"#)
        .send()
        .await
        .expect("PUT");
    assert_eq!(plain.status(), 201);
}

/// Restoring a session past its retention window answers the same before the purge removes
/// its row and after (before: 410 `retention_expired`, then 404).
async fn a_purged_session_has_one_status(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("purged@example.com").await;
    assert_eq!(app.put_session(&token, "old", "d").await.status(), 201);
    app.send(Method::DELETE, "/v1/sessions/old", &token).await;
    app.age_deletion("old", 8).await;
    let before = app
        .json(Method::POST, "/v1/sessions/old/restore", &token)
        .await;
    let purged =
        api::service::retention::purge_expired(&app.service_db(), &api::Limits::default(), |_| {})
            .await
            .expect("purge");
    assert_eq!(purged.removed, 1);
    let after = app
        .json(Method::POST, "/v1/sessions/old/restore", &token)
        .await;
    assert_eq!(before, after);
    assert_eq!(before.0, 404, "{}", before.1);
}

crate::on_every_backend!(
    device_names_refuse_separators_and_bidi_controls,
    a_purged_session_has_one_status,
);
