//! The migrator's errors as a library caller (the API) sees them: typed, by kind.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use migration::Error;
use migration::connect::{self, ConnectError, DatabaseUrl};
use sea_orm::DatabaseConnection;
use support::{Backend, TestDb};

async fn open(url: &str) -> (DatabaseConnection, DatabaseUrl) {
    let url = connect::resolve_url(Some(url)).expect("a good URL");
    let db = connect::open(&url, None, Duration::from_secs(5), 4)
        .await
        .expect("open");
    (db, url)
}

on_every_backend!(missing_tables_unknown_history_and_changed_plans_are_told_apart);

async fn missing_tables_unknown_history_and_changed_plans_are_told_apart(backend: Backend) {
    let t = TestDb::new(backend).await;
    let (db, url) = open(&t.url).await;
    migration::cli::migrate_up(&db, &url).await.expect("up");

    t.exec("UPDATE migration_checksums SET checksum = 'old' WHERE version = 'm004_index_sessions_by_user'")
        .await;
    match migration::cli::migrate_up(&db, &url).await {
        Err(Error::ChecksumMismatch { names }) => {
            assert_eq!(names, ["m004_index_sessions_by_user"])
        }
        other => panic!("not a checksum mismatch: {other:?}"),
    }
    t.exec("DELETE FROM migration_checksums").await;
    migration::cli::migrate_up(&db, &url)
        .await
        .expect("an unrecorded sum is backfilled, not refused");

    t.exec("INSERT INTO seaql_migrations (version, applied_at) VALUES ('m099_later', 0)")
        .await;
    // The migrator refuses to run on a newer history; a server of this build may serve it
    // (the rollback rule, migration/src/rollback.rs).
    match migration::cli::migrate_up(&db, &url).await {
        Err(Error::UnknownApplied { versions }) => assert_eq!(versions, ["m099_later"]),
        other => panic!("not an unknown migration: {other:?}"),
    }
    let history = migration::cli::history_for_serving(&db, &url)
        .await
        .expect("a newer history is served");
    assert_eq!(history.newer, ["m099_later"]);
    assert!(history.pending.is_empty(), "{history:?}");
    t.exec("DELETE FROM seaql_migrations WHERE version = 'm099_later'")
        .await;

    // m006 and m010 need tables that m001-m005 made; with those gone, m010 says which.
    t.exec("DELETE FROM seaql_migrations WHERE version = 'm010_subscriptions'")
        .await;
    t.exec("DROP TABLE stripe_events").await;
    match migration::cli::migrate_up(&db, &url).await {
        Err(Error::MissingTables { migration, tables }) => {
            assert_eq!(migration, "m010_subscriptions");
            assert_eq!(tables, ["stripe_events"]);
        }
        other => panic!("not missing tables: {other:?}"),
    }
    let _ = db.close().await;
}

/// Read inside the engine (and so raised through SeaORM's runner), a bad knob is still named.
#[test]
fn a_bad_knob_is_named() {
    let dir = std::env::temp_dir().join(format!("billing-knob-{}", support::random_name()));
    let url = format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "-u", &url])
        .env("MIGRATION_LOCK_ATTEMPTS", "many")
        .output()
        .expect("run migration");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: MIGRATION_LOCK_ATTEMPTS must be a whole number, got \"many\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_are_sorted_by_kind() {
    let open = |url: String| async move {
        let url = connect::resolve_url(Some(&url))?;
        connect::open(&url, None, Duration::from_secs(2), 1).await
    };
    assert!(matches!(
        open("postgres://postgres@127.0.0.1:1/nothing".into()).await,
        Err(ConnectError::Unreachable { .. })
    ));
    assert!(matches!(
        open(support::url_on(
            Backend::Postgres,
            Some("no_such_role"),
            "postgres"
        ))
        .await,
        Err(ConnectError::Credentials { .. })
    ));
    assert!(matches!(
        open(support::url_on(Backend::MySql, Some("root:wrong"), "mysql")).await,
        Err(ConnectError::Credentials { .. })
    ));
    assert!(matches!(
        open(support::url_on(Backend::Postgres, None, "no_such_db_here")).await,
        Err(ConnectError::DatabaseMissing { .. })
    ));
    assert!(matches!(
        open(support::url_on(Backend::MySql, None, "no_such_db_here")).await,
        Err(ConnectError::DatabaseMissing { .. })
    ));
    assert!(matches!(
        open(support::url_on(Backend::MySql, None, "")).await,
        Err(ConnectError::NoDatabase { .. })
    ));
    assert!(matches!(
        open("redis://localhost".into()).await,
        Err(ConnectError::NotADatabaseUrl { .. })
    ));
    assert!(matches!(
        open("postgres://u@host:notaport/db".into()).await,
        Err(ConnectError::Malformed { .. })
    ));
}
