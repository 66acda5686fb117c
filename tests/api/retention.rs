use chrono::{DateTime, Duration, FixedOffset, Utc};
use sea_orm::{ConnectionTrait, DbBackend};

use api::Limits;
use api::service::retention::{Cursor, candidates, database_now, purge_expired};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};
use crate::support::{self, Backend};

crate::on_every_backend!(
    purges_exactly_what_is_past_each_window,
    rows_sharing_one_timestamp_are_purged_across_batches,
    purge_batches_are_read_in_index_order_without_a_sort,
    concurrent_purges_share_the_work,
    the_server_purges_periodically_when_asked,
    a_renewal_later_than_the_grace_finds_the_trash_pro_keeps,
    the_purge_clock_is_the_databases_in_utc,
);

fn batches_of(purge_batch_size: u64) -> Limits {
    Limits {
        purge_batch_size,
        ..Limits::default()
    }
}

/// Inserts a session for `email`, deleted `deleted_ago` ago (or live when None).
async fn session(app: &TestApp, email: &str, client_id: &str, deleted_ago: Option<Duration>) {
    let deleted_at = deleted_ago.map(|ago| (Utc::now() - ago).fixed_offset());
    session_deleted_at(app, email, client_id, deleted_at).await;
}

async fn session_deleted_at(
    app: &TestApp,
    email: &str,
    client_id: &str,
    deleted_at: Option<DateTime<FixedOffset>>,
) {
    let uid = app.user_id(email).await;
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
    let purged = purge_expired(&app.db.db, &batches_of(1), |p| progress.push(p.removed))
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
    let again = purge_expired(&app.db.db, &batches_of(10), |_| {})
        .await
        .unwrap();
    assert_eq!(again.removed, 0);
}

/// One `UPDATE ... SET deleted_at = now()` stamps every row with the same instant: the keyset
/// cursor must step through such a tie by id, past the rows it keeps, without skipping any.
async fn rows_sharing_one_timestamp_are_purged_across_batches(backend: Backend) {
    let app = spawn_app(backend).await;
    app.user("free@example.com").await;
    app.user("pro@example.com").await;
    app.set_subscription("pro@example.com", "active").await;
    let stamp = (Utc::now() - Duration::days(10)).fixed_offset();
    for i in 0..20 {
        for owner in ["free", "pro"] {
            let email = format!("{owner}@example.com");
            session_deleted_at(&app, &email, &format!("{owner}-{i:02}"), Some(stamp)).await;
        }
    }
    let purged = purge_expired(&app.db.db, &batches_of(7), |_| {})
        .await
        .expect("purge");
    assert_eq!(purged.removed, 20, "every Free row, past its 7 days");
    assert_eq!(
        purged.batches, 6,
        "40 candidates in batches of 7, each read once"
    );
    let expected: Vec<String> = (0..20).map(|i| format!("pro-{i:02}")).collect();
    assert_eq!(remaining(&app).await, expected, "Pro keeps 30 days");
}

/// The purge's batch query reads `idx_sessions_deleted_at` in its own order, bounded by the
/// cursor, with no sort step, even inside a large tie (m008 on PostgreSQL; the index's
/// implicit primary key on MySQL and SQLite).
async fn purge_batches_are_read_in_index_order_without_a_sort(backend: Backend) {
    let app = spawn_app(backend).await;
    app.user("free@example.com").await;
    let uid = app.user_id("free@example.com").await;
    for chunk in 0..20 {
        let rows: Vec<String> = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                // Every fourth row deleted, all at the same instant; the rest live.
                let deleted = if n % 4 == 0 {
                    "'2020-01-01 00:00:00'"
                } else {
                    "NULL"
                };
                format!("({uid}, 'c{n}', 'd', 'p', {deleted})")
            })
            .collect();
        app.db
            .exec(&format!(
                "INSERT INTO synced_sessions (user_id, client_id, device_name, payload, deleted_at) \
                 VALUES {}",
                rows.join(", ")
            ))
            .await;
    }
    let db = &app.db.db;
    let analyze = match backend {
        Backend::Postgres => "ANALYZE synced_sessions",
        Backend::MySql => "ANALYZE TABLE synced_sessions",
        Backend::Sqlite => "ANALYZE",
    };
    db.execute_unprepared(analyze).await.expect("analyze");
    let tie = DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z").expect("timestamp");
    let middle_id: i64 = app
        .db
        .texts("SELECT id FROM synced_sessions WHERE client_id = 'c10000'")
        .await[0]
        .parse()
        .expect("id");
    let cursor = Cursor {
        deleted_at: tie,
        id: middle_id,
    };
    let batch = candidates(
        db.get_database_backend(),
        Utc::now().fixed_offset(),
        Some(&cursor),
        100,
    );
    let explain = match backend {
        Backend::MySql => "EXPLAIN FORMAT=JSON ",
        Backend::Sqlite => "EXPLAIN QUERY PLAN ",
        Backend::Postgres => "EXPLAIN ",
    };
    let plan_statement = sea_orm::Statement {
        sql: format!("{explain}{}", batch.sql),
        ..batch
    };
    let rows = db.query_all_raw(plan_statement).await.expect("explain");
    let column = if backend == Backend::Sqlite { 3 } else { 0 };
    let plan: String = rows
        .iter()
        .map(|row| row.try_get_by_index::<String>(column).expect("plan text"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("idx_sessions_deleted_at"), "{plan}");
    match db.get_database_backend() {
        DbBackend::Postgres => {
            assert!(!plan.contains("Sort"), "{plan}");
            assert!(
                plan.contains("ROW(deleted_at, id) > ROW("),
                "cursor is an index bound: {plan}"
            );
        }
        DbBackend::MySql => {
            let compact: String = plan.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(!compact.contains("filesort"), "{plan}");
            assert!(
                compact.contains(r#""used_key_parts":["deleted_at","id"]"#),
                "cursor bounds both key parts: {plan}"
            );
        }
        _ => {
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            assert!(!plan.contains("MULTI-INDEX"), "{plan}");
        }
    }
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
            tokio::spawn(async move { purge_expired(&db, &batches_of(7), |_| {}).await })
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

/// Stripe's renewal can arrive after `current_period_end`. Within the renewal grace the user is
/// still Pro; past it they are Free, but the purge keeps Pro's window as long as they held
/// Pro at any moment of the grace, so a renewal a little later still finds their trash.
/// (Before: Free the instant the period ended, and sessions trashed 8-30 days ago were gone.)
async fn a_renewal_later_than_the_grace_finds_the_trash_pro_keeps(backend: Backend) {
    let app = spawn_app(backend).await;
    let day = Duration::days(1);
    let now = Utc::now();
    // (email, period ended this long ago, tier now, trash kept as Pro's)
    let cases = [
        ("in-grace@example.com", day, "pro", true),
        ("just-past@example.com", day * 4, "free", true),
        ("long-past@example.com", day * 7, "free", false),
    ];
    for (email, ended, _, _) in cases {
        app.user(email).await;
        let stmt = app.db.stmt(
            "UPDATE users SET subscription_status = 'active', current_period_end = $1 \
             WHERE email = $2",
            vec![(now - ended).fixed_offset().into(), email.into()],
        );
        sea_orm::ConnectionTrait::execute_raw(&app.db.db, stmt)
            .await
            .expect("lapse");
        session(&app, email, &format!("{email}-trashed"), Some(day * 10)).await;
    }
    // The same through Stripe: a subscription whose period ended 4 days ago.
    app.user("stripe@example.com").await;
    let uid = app.user_id("stripe@example.com").await;
    let t = now.timestamp();
    app.deliver_event(&crate::helpers::checkout(
        "evt_r0", t, uid, "cus_r", "sub_r",
    ))
    .await;
    app.deliver_event(&crate::helpers::subscription(
        "evt_r1",
        "updated",
        t,
        ("cus_r", "sub_r"),
        "active",
        (now - day * 4).timestamp(),
        true,
    ))
    .await;
    session(&app, "stripe@example.com", "stripe-trashed", Some(day * 10)).await;

    for (email, _, tier, _) in cases {
        let uid = app.user_id(email).await;
        let tiers = app
            .db
            .texts(&format!(
                "SELECT tier FROM user_tiers WHERE user_id = {uid}"
            ))
            .await;
        assert_eq!(tiers, vec![tier], "{email}");
    }
    purge_expired(&app.db.db, &batches_of(10), |_| {})
        .await
        .expect("purge");
    let mut kept: Vec<String> = cases
        .iter()
        .filter(|(_, _, _, kept)| *kept)
        .map(|(email, _, _, _)| format!("{email}-trashed"))
        .collect();
    kept.push("stripe-trashed".to_owned());
    kept.sort();
    assert_eq!(remaining(&app).await, kept);
}

/// The purge measures windows by the clock the `user_tiers` view reads, the database's, and
/// reads it in UTC whatever the backend: on this machine the two clocks agree, so the
/// database's, read right, is within moments of the host's.
async fn the_purge_clock_is_the_databases_in_utc(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = Utc::now();
    let db_now = database_now(&app.db.db).await.expect("the database's time");
    let after = Utc::now();
    let slack = Duration::seconds(5);
    assert!(
        db_now > before - slack && db_now < after + slack,
        "{db_now} not between {before} and {after}"
    );
}
