//! The `migration` binary as users run it: errors, the lock, the dry run, crash recovery.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use support::schema::{snapshot, without_bookkeeping};
use support::{Backend, TestDb};

fn migration(args: &[&str], url: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migration"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_BACKTRACE", "1");
    if let Some(url) = url {
        cmd.args(["-u", url]);
    }
    cmd.output().expect("run migration binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit 1, one `error:` line that contains `expected`, no panic, no backtrace.
fn assert_clear_error(output: &Output, expected: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn malformed_url_is_named() {
    let out = migration(&["status"], Some("postgres://me:secret@host:notaport/db"));
    assert_clear_error(&out, "malformed");
    assert!(!stderr(&out).contains("secret"), "password leaked");
    assert_clear_error(
        &migration(&["up"], Some("redis://localhost")),
        "not a database URL",
    );
}

#[test]
fn unreachable_server_is_named() {
    let out = migration(
        &["up", "--connect-timeout", "1"],
        Some("postgres://postgres@127.0.0.1:1/nothing"),
    );
    assert_clear_error(&out, "cannot reach the database server");
}

#[test]
fn wrong_credentials_are_named() {
    let pg = migration(
        &["status"],
        Some("postgres://no_such_role@127.0.0.1:5432/postgres"),
    );
    assert_clear_error(&pg, "refused the credentials");
    let my = migration(
        &["status"],
        Some("mysql://root:wrong-password@127.0.0.1:3306/mysql"),
    );
    assert_clear_error(&my, "refused the credentials");
}

#[test]
fn missing_database_is_named() {
    let pg = migration(
        &["status"],
        Some("postgres://postgres@127.0.0.1:5432/no_such_db_here"),
    );
    assert_clear_error(&pg, "does not exist");
    let my = migration(
        &["status"],
        Some("mysql://root@127.0.0.1:3306/no_such_db_here"),
    );
    assert_clear_error(&my, "does not exist");
}

#[test]
fn unknown_backend_and_migration_are_named() {
    assert_clear_error(
        &migration(&["sql", "--backend", "oracle"], None),
        "unknown backend",
    );
    assert_clear_error(
        &migration(
            &["sql", "--backend", "postgres", "--migration", "m999"],
            None,
        ),
        "no migration named",
    );
}

on_every_backend!(
    m006_names_the_missing_tables,
    an_applied_migration_without_code_is_refused,
    eight_migrators_at_once_all_succeed_and_each_migration_runs_once,
    sql_prints_pending_migrations_without_running_them,
);

async fn m006_names_the_missing_tables(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up", "-n", "5"], Some(&t.url)).status.success());
    t.exec("DROP TABLE api_tokens").await;
    t.exec("DROP TABLE synced_sessions").await;
    assert_clear_error(&migration(&["up"], Some(&t.url)), "synced_sessions");
}

async fn an_applied_migration_without_code_is_refused(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up"], Some(&t.url)).status.success());
    t.exec("INSERT INTO seaql_migrations (version, applied_at) VALUES ('m099_from_the_future', 0)")
        .await;
    assert_clear_error(&migration(&["up"], Some(&t.url)), "m099_from_the_future");
    assert_clear_error(
        &migration(&["status"], Some(&t.url)),
        "m099_from_the_future",
    );
}

async fn eight_migrators_at_once_all_succeed_and_each_migration_runs_once(backend: Backend) {
    let t = TestDb::new(backend).await;
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_migration"))
                .args(["up", "-u", &t.url])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn migrator")
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    let all = outputs.iter().map(stderr).collect::<Vec<_>>().join("\n");
    for out in &outputs {
        assert!(out.status.success(), "{}", stderr(out));
    }
    for name in [
        "m001_create_users",
        "m002_create_synced_sessions",
        "m003_create_api_tokens",
        "m004_index_sessions_by_user",
        "m005_add_user_display_name",
        "m006_billing_fields",
        "m007_stripe_events",
        "m008_deleted_at_index_by_id",
    ] {
        let applied = format!("Migration '{name}' has been applied");
        assert_eq!(
            all.matches(&applied).count(),
            1,
            "{name} ran other than once:\n{all}"
        );
    }
    assert!(all.contains("waiting for the migration lock"), "{all}");
    assert_eq!(
        t.texts("SELECT count(*) FROM seaql_migrations").await,
        vec![migration::Migrator::planned().len().to_string()]
    );
}

async fn sql_prints_pending_migrations_without_running_them(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up", "-n", "5"], Some(&t.url)).status.success());
    let before = snapshot(&t).await;
    let out = migration(&["sql"], Some(&t.url));
    assert!(out.status.success(), "{}", stderr(&out));
    let sql = String::from_utf8_lossy(&out.stdout);
    assert!(sql.contains("-- m006_billing_fields up"), "{sql}");
    assert!(!sql.contains("m005_add_user_display_name"), "{sql}");
    assert!(sql.contains("idx_users_stripe_customer"), "{sql}");
    assert_eq!(
        snapshot(&t).await,
        before,
        "the dry run changed the database"
    );
    let down = migration(&["sql", "down"], Some(&t.url));
    let down_sql = String::from_utf8_lossy(&down.stdout);
    assert!(
        down_sql.contains("-- m005_add_user_display_name down"),
        "{down_sql}"
    );
}

#[test]
fn postgres_dry_run_is_lock_aware() {
    let out = migration(
        &[
            "sql",
            "--backend",
            "postgres",
            "--migration",
            "m006_billing_fields",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let sql = String::from_utf8_lossy(&out.stdout);
    assert!(sql.contains("SET LOCAL lock_timeout"), "{sql}");
    assert!(sql.contains("NOT VALID"), "{sql}");
    assert!(sql.contains("VALIDATE CONSTRAINT"), "{sql}");
    assert!(sql.contains("CREATE UNIQUE INDEX CONCURRENTLY"), "{sql}");
    assert!(sql.contains("WHERE \"deleted_at\" IS NOT NULL"), "{sql}");
    assert!(
        !sql.contains("BEGIN;\n-- step 1"),
        "m006 must not run in one transaction"
    );
}

/// SIGKILL the migrator before every statement of m006's and m008's `up` and `down`, run it
/// again, and compare with a clean run; existing rows must be untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_any_statement_postgres_recovers() {
    for (name, version) in [
        ("m006_billing_fields", 6),
        ("m008_deleted_at_index_by_id", 8),
    ] {
        killed_at_any_statement_of(name, version).await;
    }
}

async fn killed_at_any_statement_of(name: &str, version: u32) {
    let (before_it, with_it) = ((version - 1).to_string(), version.to_string());
    let reference = TestDb::new(Backend::Postgres).await;
    assert!(
        migration(&["up", "-n", &before_it], Some(&reference.url))
            .status
            .success()
    );
    let before = without_bookkeeping(snapshot(&reference).await);
    assert!(
        migration(&["up", "-n", "1"], Some(&reference.url))
            .status
            .success()
    );
    let after = without_bookkeeping(snapshot(&reference).await);
    let plan_len = |direction: &str| {
        let out = migration(
            &[
                "sql",
                direction,
                "--backend",
                "postgres",
                "--migration",
                name,
            ],
            None,
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                !l.starts_with("--")
                    && !l.is_empty()
                    && !l.starts_with("BEGIN")
                    && !l.starts_with("COMMIT")
                    && !l.starts_with("SET LOCAL")
            })
            .count()
    };

    for (direction, statements) in [("up", plan_len("up")), ("down", plan_len("down"))] {
        assert!(statements >= 5, "{name} {direction}: {statements}");
        let mut reached = 0;
        for n in 0..statements {
            let t = TestDb::new(Backend::Postgres).await;
            let target = if direction == "up" {
                &before_it
            } else {
                &with_it
            };
            assert!(
                migration(&["up", "-n", target], Some(&t.url))
                    .status
                    .success()
            );
            t.exec("INSERT INTO users (email) SELECT 'u' || g || '@x.test' FROM generate_series(1, 200) g").await;
            t.exec("INSERT INTO synced_sessions (user_id, client_id, device_name, payload) SELECT id, 'c', 'd', 'p' || id FROM users").await;
            let checksum = "SELECT md5(string_agg(concat_ws('|', u.id, u.email, s.id, s.payload), ',' ORDER BY u.id, s.id)) \
                            FROM users u JOIN synced_sessions s ON s.user_id = u.id";
            let rows_before = t.texts(checksum).await;

            // Exactly this one migration, each way.
            let command = [direction, "-n", "1"];
            let mut child = Command::new(env!("CARGO_BIN_EXE_migration"))
                .args(command)
                .args(["-u", &t.url])
                .env("MIGRATION_PAUSE_BEFORE", format!("{name}:{direction}:{n}"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            let reader = BufReader::new(child.stderr.take().expect("stderr"));
            let (mut paused, mut skipped_step) = (false, false);
            for line in reader.lines() {
                let line = line.expect("read stderr");
                if line.contains("paused before") {
                    paused = true;
                    break;
                }
                skipped_step |= line.contains("already done, skipped");
            }
            if paused {
                child.kill().expect("SIGKILL");
                let _ = child.wait();
                reached += 1;
                let rerun = migration(&command, Some(&t.url));
                assert!(
                    rerun.status.success(),
                    "{name} {direction} after kill at {n}: {}",
                    stderr(&rerun)
                );
            } else {
                // The statement belongs to a step whose probe says there is nothing to do
                // (m008's cleanup of the other direction's leftovers): the run went past it.
                let finished = child.wait().expect("wait");
                assert!(
                    finished.success() && skipped_step,
                    "{name} {direction}: never reached statement {n}"
                );
            }
            let expected = if direction == "up" { &after } else { &before };
            assert_eq!(
                &without_bookkeeping(snapshot(&t).await),
                expected,
                "{name} {direction} killed at {n}"
            );
            assert_eq!(
                t.texts(checksum).await,
                rows_before,
                "{name} {direction} killed at {n} changed rows"
            );
        }
        assert!(
            reached + 1 >= statements,
            "{name} {direction}: killed at only {reached} of {statements} statements"
        );
    }
}

/// A long transaction holding `users`: the migrator retries within its budget, then says
/// what blocks it; once the blocker commits, the same command finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_table_lock_is_retried_then_reported_postgres() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let t = TestDb::new(Backend::Postgres).await;
    assert!(migration(&["up", "-n", "5"], Some(&t.url)).status.success());
    let blocker = t.db.begin().await.expect("begin");
    blocker
        .execute_unprepared("LOCK TABLE users IN ACCESS SHARE MODE")
        .await
        .expect("lock users");

    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "-u", &t.url])
        .env("MIGRATION_LOCK_TIMEOUT_MS", "20")
        .env("MIGRATION_LOCK_ATTEMPTS", "3")
        .output()
        .expect("run migrator");
    assert_clear_error(&out, "could not take the table lock");
    let err = stderr(&out);
    assert_eq!(err.matches("retrying in").count(), 2, "{err}");
    assert!(err.contains("pg_stat_activity"), "{err}");
    // Nothing half-done is left that a re-run cannot finish.
    let retry = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "-u", &t.url])
        .env("MIGRATION_LOCK_TIMEOUT_MS", "20")
        .env("MIGRATION_LOCK_ATTEMPTS", "100")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn migrator");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    blocker.commit().await.expect("release");
    let out = retry.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("retrying in"),
        "the lock was held, so it must have retried: {err}"
    );
    assert!(
        err.contains("Migration 'm006_billing_fields' has been applied"),
        "{err}"
    );
}
