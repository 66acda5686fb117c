use chrono::{Duration, Utc};

use api::Limits;
use api::service::retention::purge_expired;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};
use crate::support::{self, Backend};

crate::on_every_backend!(
    purges_exactly_what_is_past_each_window,
    concurrent_purges_share_the_work,
    the_server_purges_periodically_when_asked,
);

fn batches_of(purge_batch_size: u64) -> Limits {
    Limits {
        purge_batch_size,
        ..Limits::default()
    }
}

/// Inserts a session for `email`, deleted `deleted_ago` ago (or live when None).
async fn session(app: &TestApp, email: &str, client_id: &str, deleted_ago: Option<Duration>) {
    let uid = app.user_id(email).await;
    let deleted_at = deleted_ago.map(|ago| (Utc::now() - ago).fixed_offset());
    let stmt = app.db.stmt(
        "INSERT INTO synced_sessions (user_id, client_id, device_name, payload, deleted_at) \
         VALUES ($1, $2, 'd', '{}', $3)",
        vec![uid.into(), client_id.into(), deleted_at.into()],
    );
    sea_orm::ConnectionTrait::execute_raw(&app.db.db, stmt)
        .await
        .expect("insert session");
}

async fn remaining(app: &TestApp) -> Vec<String> {
    app.db
        .texts("SELECT client_id FROM synced_sessions ORDER BY client_id")
        .await
}

async fn purges_exactly_what_is_past_each_window(backend: Backend) {
    let app = spawn_app(backend).await;
    app.user("free@example.com").await;
    app.user("pro@example.com").await;
    app.set_subscription("pro@example.com", "active").await;
    let (hour, day) = (Duration::hours(1), Duration::days(1));
    session(&app, "free@example.com", "free-live-old", None).await;
    session(
        &app,
        "free@example.com",
        "free-inside",
        Some(day * 7 - hour),
    )
    .await;
    session(
        &app,
        "free@example.com",
        "free-outside",
        Some(day * 7 + hour),
    )
    .await;
    session(&app, "pro@example.com", "pro-live", None).await;
    session(&app, "pro@example.com", "pro-at-8-days", Some(day * 8)).await;
    session(&app, "pro@example.com", "pro-inside", Some(day * 30 - hour)).await;
    session(
        &app,
        "pro@example.com",
        "pro-outside",
        Some(day * 30 + hour),
    )
    .await;

    let mut progress = Vec::new();
    let purged = purge_expired(&app.db.db, &batches_of(1), Utc::now(), |p| {
        progress.push(p.removed)
    })
    .await
    .expect("purge");
    assert_eq!(purged.removed, 2);
    // One progress call per batch of one row, oldest deletion first: pro-outside (removed),
    // pro-inside and pro-at-8-days (kept: Pro keeps 30 days), free-outside (removed).
    assert_eq!(progress, vec![1, 1, 1, 2]);
    assert_eq!(purged.batches, 4);
    assert_eq!(
        remaining(&app).await,
        vec![
            "free-inside",
            "free-live-old",
            "pro-at-8-days",
            "pro-inside",
            "pro-live"
        ]
    );
    // Again: nothing left to do.
    let again = purge_expired(&app.db.db, &batches_of(10), Utc::now(), |_| {})
        .await
        .unwrap();
    assert_eq!(again.removed, 0);
}

async fn concurrent_purges_share_the_work(backend: Backend) {
    let app = spawn_app(backend).await;
    app.user("free@example.com").await;
    for i in 0..120 {
        session(
            &app,
            "free@example.com",
            &format!("old-{i:03}"),
            Some(Duration::days(10)),
        )
        .await;
    }
    session(&app, "free@example.com", "keep", None).await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let db = app.db.db.clone();
            tokio::spawn(
                async move { purge_expired(&db, &batches_of(7), Utc::now(), |_| {}).await },
            )
        })
        .collect();
    let mut total = 0;
    for run in runs {
        total += run.await.unwrap().expect("a purge failed").removed;
    }
    assert_eq!(total, 120, "every row removed exactly once");
    assert_eq!(remaining(&app).await, vec!["keep"]);
}

async fn the_server_purges_periodically_when_asked(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.purge_every_secs = 1).await;
    app.user("free@example.com").await;
    session(&app, "free@example.com", "expired", Some(Duration::days(8))).await;
    session(&app, "free@example.com", "recent", Some(Duration::days(1))).await;
    // The task's first run is immediate, then every second; give it up to 20 s.
    for _ in 0..200 {
        if remaining(&app).await == vec!["recent"] {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "the periodic purge did not run: {:?}",
        remaining(&app).await
    );
}
