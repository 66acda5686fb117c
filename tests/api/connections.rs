//! Slow and silent clients (api/src/serve.rs): each bound closes what a client holds, and a
//! flood of half-sent heads does not keep others out. The bounds are set to a second or two
//! here; the waits allowed around them only catch a bound that does not apply at all.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::binary::{serve_configured, serve_with};
use crate::helpers::{TestApp, code, spawn_app_with};
use crate::support::{self, Backend};

/// What the issue reproduced with: more half-sent heads than the 1,024 open files a process
/// gets by default.
const HALF_SENT_HEADS: usize = 1_100;

/// The open-file limit many systems give a process by default, under which the server starts.
const DEFAULT_OPEN_FILES: libc::rlim_t = 1_024;

/// How long a closed connection may take to be noticed past its bound.
const SLACK: Duration = Duration::from_secs(5);

pub fn host(app_address: &str) -> &str {
    app_address.trim_start_matches("http://")
}

/// Whether the server closes `stream` within `within`: a read sees the end (or a reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer (e.g. to a finished request): keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// Raises this test process's soft open-file limit to what the heads need (the server gets
/// its own, lower one). Returns how many heads fit.
fn room_for_heads() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    // Other tests of this process hold files too.
    let room = usize::try_from(limit.rlim_cur.saturating_sub(500)).unwrap_or(usize::MAX);
    assert!(
        room >= HALF_SENT_HEADS,
        "the hard open-file limit ({}) is too low for this test: raise `ulimit -Hn`",
        limit.rlim_max
    );
    HALF_SENT_HEADS
}

/// 1,100 connections each holding half a request head, against a server started under the
/// default 1,024 open files: a real client is still served and `/healthz` answers within a
/// second. Before, the server ran out of files ("accept error: Too many open files") and
/// `/healthz` timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_heads_do_not_keep_real_clients_out() {
    let heads = room_for_heads();
    let server = serve_configured(&[], |command| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child here.
        unsafe {
            command.pre_exec(|| {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                limit.rlim_cur = limit.rlim_max.min(DEFAULT_OPEN_FILES);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .await
    .expect("server starts");
    let address = host(&server.address).to_owned();
    let mut held = Vec::with_capacity(heads);
    for _ in 0..heads {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("half a head");
        held.push(stream);
    }
    // Give the server time to accept them all (or fail to).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let health = client
        .get(format!("{}/healthz", server.address))
        .send()
        .await
        .expect("/healthz answers within a second");
    assert_eq!(health.status(), 200);
    let openapi = client
        .get(format!("{}/openapi.json", server.address))
        .send()
        .await
        .expect("a real client is served");
    assert_eq!(openapi.status(), 200);
    // The heads are still open: it is the server's room, not their timeout, that served us.
    assert!(!closed_within(&mut held[0], Duration::from_millis(10)).await);
}

/// SIGTERM while a client holds half a head: the server exits within SHUTDOWN_GRACE_SECS.
/// Before, it closed its listener and then waited for that client for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_half_sent_head_exits_within_the_grace() {
    let mut server = serve_with(&[
        ("SHUTDOWN_GRACE_SECS", "2"),
        // Long enough that the head's own timeout does not end it first.
        ("HEADER_READ_TIMEOUT_SECS", "600"),
    ])
    .await
    .expect("server starts");
    let mut stream = TcpStream::connect(host(&server.address))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a head");
    // And one request in flight's worth of normal traffic first, so the server is serving.
    let status = reqwest::get(format!("{}/healthz", server.address))
        .await
        .expect("healthz")
        .status();
    assert_eq!(status, 200);
    let terminated = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(terminated.success());
    let sent = Instant::now();
    let exited = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break Some(status);
        }
        if sent.elapsed() > Duration::from_secs(2) + SLACK {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = exited.expect("the server exits within the shutdown grace");
    assert!(status.success(), "{status}");
    assert!(closed_within(&mut stream, Duration::from_secs(1)).await);
}

/// A half-sent head, a connection that sends nothing, and a kept-alive connection that sends
/// nothing more are each closed once their bound passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_silent_and_idle_connections_are_closed() {
    let app = spawn_app_with(Backend::Sqlite, |settings| {
        settings.connections.header_read_timeout_secs = 1;
        settings.connections.idle_timeout_secs = 2;
    })
    .await;
    let address = host(&app.address);
    let mut half_head = TcpStream::connect(address).await.expect("connect");
    half_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a head");
    let mut silent = TcpStream::connect(address).await.expect("connect");
    let mut idle = TcpStream::connect(address).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("a whole request");
    let mut answer = [0u8; 4096];
    let n = idle.read(&mut answer).await.expect("the answer");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    let started = Instant::now();
    assert!(closed_within(&mut half_head, Duration::from_secs(1) + SLACK).await);
    assert!(closed_within(&mut silent, Duration::from_secs(1) + SLACK).await);
    assert!(closed_within(&mut idle, Duration::from_secs(2) + SLACK).await);
    // A kept-alive connection gets its own, longer bound, not the head's.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

/// A body sent slower than BODY_READ_TIMEOUT_SECS allows is answered 408 in our error shape
/// (before: 503 `timeout` once the whole request timed out), on the webhook too.
async fn a_trickled_body_is_answered_408(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.connections.body_read_timeout_secs = 1;
        settings.request_timeout_secs = 20;
    })
    .await;
    let token = app.user("slow@example.com").await;
    for (path, auth) in [
        (
            "/v1/sessions/slow",
            format!("Authorization: Bearer {token}\r\n"),
        ),
        (
            "/webhooks/stripe",
            "Stripe-Signature: t=1,v1=00\r\n".to_owned(),
        ),
    ] {
        let mut stream = TcpStream::connect(host(&app.address))
            .await
            .expect("connect");
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"device_name\""
        );
        let head = if path.starts_with("/webhooks") {
            head.replacen("PUT", "POST", 1)
        } else {
            head
        };
        stream.write_all(head.as_bytes()).await.expect("head");
        let (status, body) = read_answer(&mut stream, Duration::from_secs(1) + SLACK).await;
        assert_eq!(status, 408, "{path}: {body}");
        assert_eq!(code(&body), "body_timeout", "{path}: {body}");
    }
    still_serves(&app, &token).await;
}

crate::on_every_backend!(a_trickled_body_is_answered_408);

async fn still_serves(app: &TestApp, token: &str) {
    assert_eq!(app.status(Method::GET, "/v1/sessions", token).await, 200);
}

/// The status and JSON body of the first answer on `stream`.
pub async fn read_answer(stream: &mut TcpStream, within: Duration) -> (u16, Value) {
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "no whole answer in time; got {:?}",
                String::from_utf8_lossy(&text)
            ),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => text.extend_from_slice(&buf[..n]),
        }
        let got = String::from_utf8_lossy(&text);
        if let Some((_, body)) = got.split_once("\r\n\r\n")
            && serde_json::from_str::<Value>(body).is_ok()
        {
            break;
        }
    }
    let got = String::from_utf8_lossy(&text).into_owned();
    let status = got
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = got
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, body)
}
