//! `--migrate on-start|check|skip` (`MIGRATE`): who applies the migrations before the server
//! serves.

use std::process::Command;

use api::settings::MigrateMode;
use api::startup_error::StartupError;
use migration::MigratorTrait;

use crate::helpers::test_settings;
use crate::support::schema::snapshot;
use crate::support::{self, Backend, TestDb};

crate::on_every_backend!(
    check_refuses_to_serve_while_migrations_are_pending,
    skip_serves_the_schema_as_it_is,
    on_start_migrates_and_then_check_serves,
    both_modes_follow_one_rollback_rule,
);

fn migration_names() -> Vec<String> {
    migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect()
}

async fn check_refuses_to_serve_while_migrations_are_pending(backend: Backend) {
    let t = TestDb::new(backend).await;
    let mut settings = test_settings(&t.url);
    settings.migrate = MigrateMode::Check;
    match api::Application::build(&settings).await {
        Ok(_) => panic!("served with every migration pending"),
        Err(StartupError::PendingMigrations { pending }) => {
            assert_eq!(pending, migration_names())
        }
        Err(other) => panic!("not the pending-migrations error: {other}"),
    }
    assert_eq!(snapshot(&t).await, Vec::<String>::new(), "check wrote");
}

async fn skip_serves_the_schema_as_it_is(backend: Backend) {
    let t = TestDb::new(backend).await;
    let mut settings = test_settings(&t.url);
    settings.migrate = MigrateMode::Skip;
    let app = api::Application::build(&settings).await;
    assert!(app.is_ok(), "{:?}", app.err());
    assert_eq!(snapshot(&t).await, Vec::<String>::new(), "skip migrated");
}

async fn on_start_migrates_and_then_check_serves(backend: Backend) {
    let t = TestDb::new(backend).await;
    let settings = test_settings(&t.url);
    assert_eq!(
        settings.migrate,
        MigrateMode::OnStart,
        "the default changed"
    );
    let app = api::Application::build(&settings).await;
    assert!(app.is_ok(), "{:?}", app.err());
    drop(app);
    assert_eq!(
        t.texts("SELECT count(*) FROM seaql_migrations").await,
        vec![migration_names().len().to_string()]
    );
    let mut settings = test_settings(&t.url);
    settings.migrate = MigrateMode::Check;
    let app = api::Application::build(&settings).await;
    assert!(app.is_ok(), "{:?}", app.err());
}

/// Starts a server in `mode` on `t` and drops it.
async fn start(t: &TestDb, mode: MigrateMode) -> Result<(), StartupError> {
    let mut settings = test_settings(&t.url);
    settings.migrate = mode;
    api::Application::build(&settings).await.map(drop)
}

const BOTH: [MigrateMode; 2] = [MigrateMode::OnStart, MigrateMode::Check];

/// Both modes start on `t`, which records `case`.
async fn both_serve(t: &TestDb, case: &str) {
    for mode in BOTH {
        let served = start(t, mode).await;
        assert!(
            served.is_ok(),
            "{mode:?} refused {case}: {:?}",
            served.err()
        );
    }
}

/// docs/operations.md "Rollbacks": `on-start` and `check` serve the same histories.
/// Before, `check` refused the previous release during a rollback (newer migrations
/// recorded), and `on-start` refused it too, and a changed checksum with nothing pending.
async fn both_modes_follow_one_rollback_rule(backend: Backend) {
    let t = TestDb::new(backend).await;
    start(&t, MigrateMode::OnStart).await.expect("migrate");
    let names = migration_names();
    let last = names.last().cloned().unwrap_or_default();

    // The release rolled back from applied a migration this build does not have.
    t.exec(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m999_of_a_later_release', 0)",
    )
    .await;
    both_serve(&t, "a rollback").await;
    // ... and nothing of this build is pending: the migrator did not run (nothing recorded).
    assert_eq!(
        t.texts("SELECT count(*) FROM seaql_migrations").await,
        vec![(names.len() + 1).to_string()]
    );

    // An older migration of this build missing under a newer one: not a history to serve.
    t.exec(&format!(
        "DELETE FROM seaql_migrations WHERE version = '{last}'"
    ))
    .await;
    for mode in BOTH {
        match start(&t, mode).await {
            Err(StartupError::Migration(migration::Error::PendingBelowNewer {
                pending,
                newer,
            })) => {
                assert_eq!(pending, std::slice::from_ref(&last), "{mode:?}");
                assert_eq!(newer, ["m999_of_a_later_release"], "{mode:?}");
            }
            other => {
                panic!("{mode:?} did not refuse a pending migration below a newer one: {other:?}")
            }
        }
    }
    t.exec("DELETE FROM seaql_migrations WHERE version = 'm999_of_a_later_release'")
        .await;
    start(&t, MigrateMode::OnStart)
        .await
        .expect("migrate the last one again");

    // An unknown migration among this build's: another branch's history, refused by both.
    t.exec(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m005a_of_another_branch', 0)",
    )
    .await;
    for mode in BOTH {
        match start(&t, mode).await {
            Err(StartupError::Migration(migration::Error::UnknownApplied { versions })) => {
                assert_eq!(versions, ["m005a_of_another_branch"], "{mode:?}")
            }
            other => panic!("{mode:?} served a forked history: {other:?}"),
        }
    }
    t.exec("DELETE FROM seaql_migrations WHERE version = 'm005a_of_another_branch'")
        .await;

    // A checksum that differs (a newer release accepted an edit), nothing pending: served.
    t.exec("UPDATE migration_checksums SET checksum = 'accepted-by-a-later-release' WHERE version = 'm004_index_sessions_by_user'")
        .await;
    both_serve(&t, "a changed checksum with nothing pending").await;
    assert_eq!(
        t.texts(
            "SELECT checksum FROM migration_checksums WHERE version = 'm004_index_sessions_by_user'"
        )
        .await,
        ["accepted-by-a-later-release"],
        "serving accepted nothing"
    );

    // With something pending, `on-start` would run code on it: `up` refuses, as the CLI does.
    t.exec(&format!(
        "DELETE FROM seaql_migrations WHERE version = '{last}'"
    ))
    .await;
    match start(&t, MigrateMode::OnStart).await {
        Err(StartupError::Migration(migration::Error::ChecksumMismatch { names })) => {
            assert_eq!(names, ["m004_index_sessions_by_user"])
        }
        other => panic!("on-start migrated past a changed checksum: {other:?}"),
    }
    match start(&t, MigrateMode::Check).await {
        Err(StartupError::PendingMigrations { pending }) => assert_eq!(pending, [last]),
        other => panic!("check served with a pending migration: {other:?}"),
    }
}

/// As operators meet it: `MIGRATE=check` on a database one migration behind exits 1 with one
/// `error:` line naming it.
#[tokio::test]
async fn the_binary_exits_with_a_clear_error_when_check_finds_pending_migrations() {
    let t = TestDb::new(Backend::Sqlite).await;
    let up = Command::new(support::migration_bin())
        .args(["up", "-n", "11", "-u", &t.url])
        .output()
        .expect("run migration");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let out = Command::new(crate::helpers::billing_bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .env("DATABASE_URL", &t.url)
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("MIGRATE", "check")
        .arg("serve")
        .output()
        .expect("run billing");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("1 pending migration(s) (m012_price_grants_pro)"),
        "{err}"
    );
    assert!(errors[0].contains("migration up"), "{err}");
    let bad = Command::new(crate::helpers::billing_bin())
        .env_clear()
        .env("DATABASE_URL", &t.url)
        .args(["--migrate", "sometimes", "serve"])
        .output()
        .expect("run billing");
    assert_eq!(bad.status.code(), Some(2), "clap refuses an unknown mode");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("on-start"),
        "the choices are listed"
    );
}

/// During a rollback, the previous release's commands start with one warning line naming the
/// newer migrations, and do their work.
#[tokio::test]
async fn the_binary_warns_once_when_it_serves_a_newer_history() {
    let t = TestDb::new(Backend::Sqlite).await;
    let up = Command::new(support::migration_bin())
        .args(["up", "-u", &t.url])
        .output()
        .expect("run migration");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    t.exec(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m999_of_a_later_release', 0)",
    )
    .await;
    for mode in ["check", "on-start"] {
        let out = Command::new(crate::helpers::billing_bin())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env("DATABASE_URL", &t.url)
            .env("MIGRATE", mode)
            .arg("purge-deleted")
            .output()
            .expect("run billing");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{mode}: {err}");
        let warnings: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("m999_of_a_later_release"))
            .collect();
        assert_eq!(warnings.len(), 1, "{mode}: {err}");
        assert!(warnings[0].contains("rollback"), "{mode}: {err}");
    }
}
