//! PostgreSQL behind a transaction-mode PgBouncer (.ci/pgbouncer.ini), as production runs it:
//! the API's lock timeout holds through it, and whatever would be silently wrong there is
//! refused at start with one line. These run in every pass and need the PgBouncer at
//! TEST_POSTGRES_POOLER_URL (default 127.0.0.1:6432): unreachable, they fail.

use std::process::Command;
use std::time::Duration;

use api::Settings;
use api::db::Pooler;
use api::settings::MigrateMode;
use api::startup_error::StartupError;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::{Value, json};

use crate::helpers::{spawn_app_on, test_settings};
use crate::support::{self, Backend, TestDb};

/// The test database `t`, reached through PgBouncer.
fn pooled(t: &TestDb) -> String {
    format!("{}/{}", support::pooler_url(), t.name)
}

/// A server for `t` reached through the PgBouncer at `pooler` with `DB_POOLER=mode`, migrating
/// on the direct URL.
fn behind(pooler: &str, t: &TestDb, mode: Pooler) -> Settings {
    let mut settings = test_settings(&t.url);
    settings.database_url = Some(format!("{pooler}/{}", t.name).into());
    settings.migration_database_url = Some(t.url.clone().into());
    settings.db_pooler = mode;
    settings
}

/// Why the server refused to start.
async fn refusal(settings: &Settings) -> StartupError {
    match api::Application::build(settings).await {
        Ok(_) => panic!("started"),
        Err(err) => err,
    }
}

async fn migrations_table(t: &TestDb) -> Vec<String> {
    t.texts("SELECT count(*) FROM pg_tables WHERE tablename = 'seaql_migrations'")
        .await
}

/// A row held by another session makes a write answer `busy` once DB_LOCK_TIMEOUT_MS has
/// passed, not `timeout` when the request's own time runs out: the lock timeout is in force
/// on whichever server connection PgBouncer lends. (With the setting lost, the write waited
/// out the request timeout instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_row_answers_busy_through_pgbouncer() {
    let t = TestDb::new(Backend::Postgres).await;
    let pooled_settings = behind(&support::pooler_url(), &t, Pooler::Transaction);
    let app = spawn_app_on(t, |settings| {
        *settings = pooled_settings;
        settings.db_lock_timeout_ms = 300;
        settings.request_timeout_secs = 20;
    })
    .await;
    let token = app.user("a@example.com").await;
    let id = app.user_id("a@example.com").await;
    let holder = support::connect(&app.db.url).await;
    let held = holder.begin().await.expect("begin");
    held.execute_unprepared(&format!("SELECT id FROM users WHERE id = {id} FOR UPDATE"))
        .await
        .expect("hold the row");
    let response = tokio::time::timeout(
        Duration::from_secs(60),
        app.request(Method::PUT, "/v1/sessions/s1", Some(&token))
            .json(&json!({"device_name": "d", "payload": {}}))
            .send(),
    )
    .await
    .expect("the write hung")
    .expect("response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "busy", "{body}");
    held.rollback().await.expect("release");
    assert_eq!(app.put_session(&token, "after", "d").await.status(), 201);
}

/// Without DB_POOLER=transaction the API sends lock_timeout as a startup option, which
/// PgBouncer refuses; the API says what to set.
#[tokio::test]
async fn the_api_names_db_pooler_when_pgbouncer_refuses_its_options() {
    let t = TestDb::new(Backend::Postgres).await;
    let settings = behind(&support::pooler_url(), &t, Pooler::None);
    match refusal(&settings).await {
        StartupError::PoolerRefusedOptions => {}
        other => panic!("not the pooler error: {other}"),
    }
}

/// A pooler told to ignore the `options` startup parameter drops lock_timeout silently (the
/// issue measured an 8 s wait answered `timeout` where 2 s and `busy` were due): the API reads
/// the setting back at start and refuses to serve.
#[tokio::test]
async fn the_api_refuses_to_serve_when_its_lock_timeout_is_dropped() {
    let t = TestDb::new(Backend::Postgres).await;
    let settings = behind(&support::dropping_pooler_url(), &t, Pooler::None);
    match refusal(&settings).await {
        err @ StartupError::LockTimeoutNotInForce { .. } => {
            let line = err.to_string();
            assert!(line.contains("lock_timeout is 0 ms"), "{line}");
            assert!(line.contains("DB_POOLER=transaction"), "{line}");
        }
        other => panic!("not the lock-timeout error: {other}"),
    }
}

/// `--migrate on-start` behind the pooler needs the direct URL; given the pooler's URL as the
/// direct one, the migrator sees through it and refuses before taking its lock.
#[tokio::test]
async fn migrations_refuse_to_run_through_pgbouncer() {
    let t = TestDb::new(Backend::Postgres).await;
    let mut settings = behind(&support::pooler_url(), &t, Pooler::Transaction);
    settings.migration_database_url = None;
    for migrate in [MigrateMode::OnStart, MigrateMode::Check] {
        settings.migrate = migrate;
        match refusal(&settings).await {
            StartupError::MigrationsNeedDirectUrl => {}
            other => panic!("{migrate:?}: not the direct-URL error: {other}"),
        }
    }
    settings.migrate = MigrateMode::OnStart;
    settings.migration_database_url = Some(pooled(&t).into());
    match refusal(&settings).await {
        StartupError::Migration(migration::Error::TransactionPooler { .. }) => {}
        other => panic!("not the pooler error: {other}"),
    }
    assert_eq!(
        migrations_table(&t).await,
        vec!["0"],
        "a migration ran through the pooler"
    );
}

/// The `migration` command: MIGRATION_DATABASE_URL wins over DATABASE_URL, and a pooler's URL
/// is refused with one `error:` line and exit 1; nothing is migrated.
#[tokio::test]
async fn the_migrator_takes_migration_database_url_and_refuses_pgbouncer() {
    let t = TestDb::new(Backend::Postgres).await;
    let run = |migration_url: Option<&str>| {
        let mut command = Command::new(support::migration_bin());
        command
            .env_remove("MIGRATION_DATABASE_URL")
            .env("NO_COLOR", "1")
            .env("DATABASE_URL", pooled(&t))
            .arg("up");
        if let Some(url) = migration_url {
            command.env("MIGRATION_DATABASE_URL", url);
        }
        command.output().expect("run migration")
    };
    let refused = run(None);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("transaction-mode pooler"), "{err}");
    assert!(errors[0].contains("MIGRATION_DATABASE_URL"), "{err}");
    assert_eq!(migrations_table(&t).await, vec!["0"]);
    let direct = run(Some(&t.url));
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );
    assert_eq!(migrations_table(&t).await, vec!["1"]);
}
