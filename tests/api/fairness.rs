//! Fair under load (api/src/token_gate.rs): bad tokens cost no query, and one token's
//! requests take at most its share of the pool. Mechanisms are asserted, not latencies
//! (those are `bench`'s).

use std::time::Duration;

use reqwest::{Client, StatusCode};
use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::helpers::{TestApp, code, spawn_app_with, start_server, test_settings};
use crate::support::{self, Backend};
use crate::throwaway_pg::{Stop, ThrowawayPg};

/// With the database stopped, a malformed token and a well-formed token the database
/// already refused are still answered 401 at once: neither costs a query. (Before, any
/// token starting with `bst_` was looked up, and here answered 503.) A real token then
/// answers 503: its lookup does need the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_tokens_cost_no_query() {
    let pg = ThrowawayPg::start();
    let url = pg.url("postgres");
    let mut settings = test_settings(&url);
    settings.request_timeout_secs = 5;
    let (address, _stop) = start_server(&settings).await;
    let token = {
        let db = support::connect(&url).await;
        let email = api::domain::Email::parse("fair@example.com").expect("email");
        let (_, token) = api::service::accounts::create_user(&db, &email)
            .await
            .expect("create user");
        let _ = db.close().await;
        token
    };
    let unknown = format!("bst_{}", "0".repeat(64));
    let client = Client::new();
    let status = |token: String| {
        let request = client
            .get(format!("{address}/v1/billing"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30));
        async move { request.send().await.expect("request").status() }
    };
    assert_eq!(status(token.clone()).await, StatusCode::OK);
    assert_eq!(status(unknown.clone()).await, StatusCode::UNAUTHORIZED);
    pg.stop(Stop::Immediate);
    for bad in [
        "bst_".to_owned(),
        "bst_xyz".to_owned(),
        format!("bst_{}", "A".repeat(64)),
        format!("bst_{}", "0".repeat(65)),
        unknown,
    ] {
        assert_eq!(status(bad.clone()).await, StatusCode::UNAUTHORIZED, "{bad}");
    }
    assert_eq!(status(token).await, StatusCode::SERVICE_UNAVAILABLE);
}

/// Backends of this test's database waiting for a lock right now.
async fn lock_waiters(app: &TestApp) -> usize {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
        app.db.name
    );
    app.db.texts(&sql).await[0].parse().unwrap_or(0)
}

/// One token's 12 concurrent reads, each stuck behind a table lock, hold at most
/// TOKEN_CONCURRENCY (2 here) of the pool's 5 connections; the rest wait in memory. Before,
/// reads were not limited: they took every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tokens_reads_take_at_most_its_share_of_the_pool() {
    let app = spawn_app_with(Backend::Postgres, |settings| {
        settings.limits.token_concurrency = 2;
        settings.db_lock_timeout_ms = 3000;
    })
    .await;
    let token = app.user("reader@example.com").await;
    assert_eq!(app.put_session(&token, "s", "d").await.status(), 201);
    let holder = support::connect(&app.db.url).await;
    let txn = holder.begin().await.expect("begin");
    txn.execute_unprepared("LOCK TABLE synced_sessions IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let reads: Vec<_> = (0..12)
        .map(|_| {
            let request = app
                .client
                .get(format!("{}/v1/sessions", app.address))
                .bearer_auth(&token);
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(lock_waiters(&app).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    txn.rollback().await.expect("release");
    for read in reads {
        let response = read.await.expect("task").expect("response");
        assert!(
            response.status() == StatusCode::OK
                || response.status() == StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            response.status()
        );
    }
    assert!(most >= 1, "no read reached the database");
    assert!(
        most <= 2,
        "{most} reads of one token waited in the database at once"
    );
}

crate::on_every_backend!(
    a_token_past_its_request_rate_waits_its_turn_or_is_refused,
    a_peer_sending_unknown_tokens_is_limited_while_another_is_served,
    failures_that_cost_no_query_count_against_the_peer_too,
    the_peer_limit_is_off_at_zero,
    a_trusted_balancer_names_the_peer_in_x_forwarded_for,
);

/// TOKEN_REQUESTS_PER_SEC=5 with a 1 s lock wait: a token's burst of 5 is served at once;
/// of 30 more sent together, those whose turn comes within the lock wait are served one per
/// 200 ms, and the rest are refused with 429 `rate_limited` and `Retry-After`, after a second.
/// Another token is served meanwhile. (Before, one token's 300 concurrent reads were limited
/// only to 4 in flight, each replaced at once: ~2,200 reads a second, another user's p99 4.7×.)
async fn a_token_past_its_request_rate_waits_its_turn_or_is_refused(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.limits.token_requests_per_sec = 5;
        settings.db_lock_timeout_ms = 1000;
    })
    .await;
    let (flooder, other) = (
        app.user("flood@example.com").await,
        app.user("other@example.com").await,
    );
    let get = |token: &str| {
        app.client
            .get(format!("{}/v1/billing", app.address))
            .bearer_auth(token)
            .send()
    };
    for n in 0..5 {
        assert_eq!(
            get(&flooder).await.expect("request").status(),
            200,
            "burst {n}"
        );
    }
    let started = std::time::Instant::now();
    let together: Vec<_> = (0..30)
        .map(|_| {
            let request = app
                .client
                .get(format!("{}/v1/billing", app.address))
                .bearer_auth(&flooder);
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in together {
        answers.push(task.await.expect("task").expect("request"));
    }
    let elapsed = started.elapsed();
    let mut served = 0;
    let mut refused = 0;
    for answer in answers {
        match answer.status() {
            StatusCode::OK => served += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(answer.headers().contains_key("retry-after"));
                let body: serde_json::Value = answer.json().await.expect("JSON");
                assert_eq!(code(&body), "rate_limited");
                refused += 1;
            }
            status => panic!("unexpected {status}"),
        }
    }
    // Within the 1 s wait: about 5 turns, a few more as the burst refills while they run.
    assert!(
        (3..=12).contains(&served),
        "{served} served, {refused} refused"
    );
    assert_eq!(served + refused, 30);
    assert!(
        elapsed >= api::rate_buckets::REFUSAL_DELAY,
        "the served ones waited their turns, the refused ones were held: {elapsed:?}"
    );
    assert_eq!(get(&other).await.expect("request").status(), 200);
}

/// A well-formed token no user has; a different one for each `n`.
fn unknown_token(n: u32) -> String {
    format!("bst_f{n:063x}")
}

/// A client whose connections come from `ip` (all of 127.0.0.0/8 is this machine's).
fn client_from(ip: [u8; 4]) -> Client {
    Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn sessions_status(
    app: &TestApp,
    client: &Client,
    token: &str,
    forwarded_for: &str,
) -> reqwest::Response {
    client
        .get(format!("{}/v1/sessions", app.address))
        .bearer_auth(token)
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .expect("request")
}

/// UNKNOWN_TOKENS_PER_PEER=5: a peer's sixth unknown token in a minute is answered 429 with
/// Retry-After, no lookup and a second's delay, whatever `X-Forwarded-For` it claims (not trusted by default).
/// A token the instance saw valid lately still works from that peer; a valid token it has not
/// seen waits like an unknown one (it is indistinguishable without the lookup). Another peer
/// is served as before, unknown tokens and all.
async fn a_peer_sending_unknown_tokens_is_limited_while_another_is_served(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.limits.unknown_tokens_per_peer = 5;
    })
    .await;
    let used = app.user("used@example.com").await;
    let fresh = app.user("fresh@example.com").await;
    let (attacker, other) = (client_from([127, 0, 0, 1]), client_from([127, 0, 0, 2]));
    let status = |response: reqwest::Response| response.status();
    assert_eq!(
        status(sessions_status(&app, &attacker, &used, "203.0.113.1").await),
        StatusCode::OK
    );
    for n in 0..5 {
        let claimed = format!("203.0.113.{n}");
        assert_eq!(
            status(sessions_status(&app, &attacker, &unknown_token(n), &claimed).await),
            StatusCode::UNAUTHORIZED,
            "unknown token {n}"
        );
    }
    let limited = sessions_status(&app, &attacker, &unknown_token(5), "203.0.113.99").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("Retry-After in seconds");
    assert!(
        (1..=12).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    let body: serde_json::Value = limited.json().await.expect("JSON");
    assert_eq!(code(&body), "too_many_unknown_tokens");
    // Past the allowance even a token already refused (answered from memory, no lookup)
    // is refused, and only after a second.
    let started = std::time::Instant::now();
    assert_eq!(
        status(sessions_status(&app, &attacker, &unknown_token(0), "-").await),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert!(started.elapsed() >= api::token_gate::PeerLimit::REFUSAL_DELAY);
    assert_eq!(
        status(sessions_status(&app, &attacker, &used, "-").await),
        StatusCode::OK,
        "a token seen valid lately still works from the limited peer"
    );
    assert_eq!(
        status(sessions_status(&app, &attacker, &fresh, "-").await),
        StatusCode::TOO_MANY_REQUESTS,
        "a valid token not seen yet waits like any other from the limited peer"
    );
    assert_eq!(
        status(sessions_status(&app, &other, &unknown_token(100), "-").await),
        StatusCode::UNAUTHORIZED,
        "another peer's unknown token is still looked up"
    );
    assert_eq!(
        status(sessions_status(&app, &other, &fresh, "-").await),
        StatusCode::OK
    );
}

/// UNKNOWN_TOKENS_PER_PEER=3: no token, a malformed one and an unknown one answered from
/// memory cost no query, but each is one of the peer's failures: the fourth is answered 429
/// after a second. (Before, only lookups counted, so a flood of cheap failures was answered
/// as fast as it was sent: ~27,000 a second from 1,000 clients, both cores busy.) A token seen
/// valid still works from that peer; another peer still gets 401.
async fn failures_that_cost_no_query_count_against_the_peer_too(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.limits.unknown_tokens_per_peer = 3;
    })
    .await;
    let token = app.user("valid@example.com").await;
    let (attacker, other) = (client_from([127, 0, 0, 1]), client_from([127, 0, 0, 2]));
    assert_eq!(
        sessions_status(&app, &attacker, &token, "-").await.status(),
        StatusCode::OK
    );
    let unknown = unknown_token(7);
    assert_eq!(
        sessions_status(&app, &other, &unknown, "-").await.status(),
        StatusCode::UNAUTHORIZED,
        "looked up once, by another peer: remembered as unknown"
    );
    let without_token = || attacker.get(format!("{}/v1/sessions", app.address)).send();
    assert_eq!(
        without_token().await.expect("request").status(),
        StatusCode::UNAUTHORIZED
    );
    for cheap in ["bst_xyz", unknown.as_str()] {
        assert_eq!(
            sessions_status(&app, &attacker, cheap, "-").await.status(),
            StatusCode::UNAUTHORIZED,
            "{cheap}"
        );
    }
    let started = std::time::Instant::now();
    let refused = without_token().await.expect("request");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(started.elapsed() >= api::token_gate::PeerLimit::REFUSAL_DELAY);
    assert_eq!(
        sessions_status(&app, &attacker, &token, "-").await.status(),
        StatusCode::OK,
        "a token seen valid lately is not held up"
    );
    assert_eq!(
        sessions_status(&app, &other, "bst_xyz", "-").await.status(),
        StatusCode::UNAUTHORIZED,
        "another peer keeps its own allowance"
    );
}

/// UNKNOWN_TOKENS_PER_PEER=0 turns the limit off: 30 unknown tokens from one peer, all 401.
async fn the_peer_limit_is_off_at_zero(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.limits.unknown_tokens_per_peer = 0;
    })
    .await;
    let client = client_from([127, 0, 0, 1]);
    for n in 0..30 {
        assert_eq!(
            sessions_status(&app, &client, &unknown_token(n), "-")
                .await
                .status(),
            StatusCode::UNAUTHORIZED,
            "unknown token {n}"
        );
    }
}

/// TRUST_X_FORWARDED_FOR=true: behind a balancer every request comes from its address, and
/// the client is the last `X-Forwarded-For` entry. One client is limited, another client
/// through the same balancer (the same connection here) is not.
async fn a_trusted_balancer_names_the_peer_in_x_forwarded_for(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.limits.unknown_tokens_per_peer = 2;
        settings.limits.trust_x_forwarded_for = true;
    })
    .await;
    let balancer = client_from([127, 0, 0, 1]);
    // The entries before the last are the client's own claims: not counted as the peer.
    for n in 0..2 {
        let claimed = format!("198.51.100.{n}, 203.0.113.7");
        assert_eq!(
            sessions_status(&app, &balancer, &unknown_token(n), &claimed)
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        sessions_status(&app, &balancer, &unknown_token(2), "203.0.113.7")
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        sessions_status(&app, &balancer, &unknown_token(3), "203.0.113.8")
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "another client behind the balancer"
    );
}
