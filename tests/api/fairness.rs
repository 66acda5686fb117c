//! Fair under load (api/src/token_gate.rs): bad tokens cost no query, and one token's
//! requests take at most its share of the pool. Mechanisms are asserted, not latencies
//! (those are `bench`'s).

use std::time::Duration;

use reqwest::{Client, StatusCode};
use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::helpers::{TestApp, spawn_app_with, start_server, test_settings};
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
