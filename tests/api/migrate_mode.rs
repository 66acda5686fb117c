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

/// As operators meet it: `MIGRATE=check` on a database one migration behind exits 1 with one
/// `error:` line naming it.
#[tokio::test]
async fn the_binary_exits_with_a_clear_error_when_check_finds_pending_migrations() {
    let t = TestDb::new(Backend::Sqlite).await;
    let up = Command::new(support::migration_bin())
        .args(["up", "-n", "10", "-u", &t.url])
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
        errors[0].contains("1 pending migration(s) (m011_past_due_since)"),
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
