//! The `migration` binary as users run it: errors, the lock, the dry run, crash recovery.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use support::schema::{snapshot, snapshot_in, without_bookkeeping};
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
    fresh_drops_views_that_depend_on_ours,
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
        "m009_session_client_id_binary",
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
        vec!["9"]
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

/// SIGKILL the migrator before every statement of m006's and m008's `up` and `down` (m009's on
/// MySQL, below), run it again, and compare with a clean run; existing rows must be untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_any_statement_postgres_recovers() {
    for (name, version) in [
        ("m006_billing_fields", 6),
        ("m008_deleted_at_index_by_id", 8),
    ] {
        killed_at_any_statement_of(Backend::Postgres, name, version).await;
    }
}

/// The same for m009 on MariaDB/MySQL, the one backend where it has steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_any_statement_mysql_recovers() {
    killed_at_any_statement_of(Backend::MySql, "m009_session_client_id_binary", 9).await;
}

async fn killed_at_any_statement_of(backend: Backend, name: &str, version: u32) {
    let (before_it, with_it) = ((version - 1).to_string(), version.to_string());
    let backend_name = match backend {
        Backend::Postgres => "postgres",
        Backend::MySql => "mysql",
        Backend::Sqlite => "sqlite",
    };
    let reference = TestDb::new(backend).await;
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
    let dry_run = |direction: &str| {
        let out = migration(
            &[
                "sql",
                direction,
                "--backend",
                backend_name,
                "--migration",
                name,
            ],
            None,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let is_statement = |l: &&str| {
        !l.starts_with("--")
            && !l.is_empty()
            && !l.starts_with("BEGIN")
            && !l.starts_with("COMMIT")
            && !l.starts_with("SET LOCAL")
            && !l.starts_with("SET SESSION")
    };
    // Statements of the steps that only clean up after an interrupted run: on a clean run
    // their probes skip them, so the pause hook never sees them.
    let cleanup_len = |sql: &str| {
        sql.split("-- step ")
            .filter(|step| step.lines().next().is_some_and(|l| l.contains(" left by ")))
            .map(|step| step.lines().skip(1).filter(is_statement).count())
            .sum::<usize>()
    };
    let plan = |direction: &str| {
        let sql = dry_run(direction);
        (sql.lines().filter(is_statement).count(), cleanup_len(&sql))
    };

    for (direction, (statements, cleanup)) in [("up", plan("up")), ("down", plan("down"))] {
        assert!(statements >= 2, "{name} {direction}: {statements}");
        let mut reached = 0;
        for n in 0..statements {
            let t = TestDb::new(backend).await;
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
            let (users, sessions, checksum) = match backend {
                Backend::Postgres => (
                    "INSERT INTO users (email) SELECT 'u' || g || '@x.test' FROM generate_series(1, 200) g",
                    "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) SELECT id, 'c', 'd', 'p' || id FROM users",
                    "SELECT md5(string_agg(concat_ws('|', u.id, u.email, s.id, s.payload), ',' ORDER BY u.id, s.id)) \
                     FROM users u JOIN synced_sessions s ON s.user_id = u.id",
                ),
                _ => (
                    "INSERT INTO users (email) WITH RECURSIVE g(n) AS \
                     (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 200) \
                     SELECT concat('u', n, '@x.test') FROM g",
                    "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) SELECT id, 'c', 'd', concat('p', id) FROM users",
                    "SELECT md5(group_concat(concat_ws('|', u.id, u.email, s.id, s.client_id, s.payload) \
                     ORDER BY u.id, s.id SEPARATOR ',')) FROM users u JOIN synced_sessions s ON s.user_id = u.id",
                ),
            };
            t.exec(users).await;
            t.exec(sessions).await;
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
            reached + cleanup >= statements,
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

/// A user's own view on `user_tiers` must not stop `fresh` (stock `fresh` cascades).
async fn fresh_drops_views_that_depend_on_ours(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up"], Some(&t.url)).status.success());
    t.exec("CREATE VIEW pro_users AS SELECT user_id FROM user_tiers WHERE tier = 'pro'")
        .await;
    let out = migration(&["fresh"], Some(&t.url));
    assert!(out.status.success(), "{}", stderr(&out));
    let schema = snapshot(&t).await.join("\n");
    assert!(schema.contains("user_tiers"), "{schema}");
    assert!(!schema.contains("pro_users"), "{schema}");
    assert_eq!(
        t.texts("SELECT count(*) FROM seaql_migrations").await,
        vec!["9"]
    );
}

/// PostgreSQL's default `search_path` is `"$user", public`. A schema named after the role
/// (here `postgres`) appearing after a full migration must not make `up` build a second copy
/// there, nor drop anything in `public`: with no `-s`, everything is `public`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_named_after_the_role_changes_nothing_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    assert!(migration(&["up"], Some(&t.url)).status.success());
    let before = snapshot(&t).await;
    t.exec("CREATE SCHEMA postgres").await;
    let out = migration(&["up"], Some(&t.url));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(snapshot(&t).await, before, "up changed public");
    assert_eq!(snapshot_in(&t, "postgres").await, Vec::<String>::new());
    let status = migration(&["status"], Some(&t.url));
    let listed = String::from_utf8_lossy(&status.stdout);
    assert_eq!(listed.matches("Applied").count(), 9, "{listed}");
}

/// `-s other_schema`: up, status and down all work there and leave `public` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_schema_gets_everything_postgres() {
    let reference = TestDb::new(Backend::Postgres).await;
    assert!(migration(&["up"], Some(&reference.url)).status.success());
    let expected = without_bookkeeping(snapshot(&reference).await);

    let t = TestDb::new(Backend::Postgres).await;
    t.exec("CREATE SCHEMA other_schema").await;
    let up = migration(&["-s", "other_schema", "up"], Some(&t.url));
    assert!(up.status.success(), "{}", stderr(&up));
    assert_eq!(
        without_bookkeeping(snapshot_in(&t, "other_schema").await),
        expected
    );
    assert_eq!(
        snapshot(&t).await,
        Vec::<String>::new(),
        "public was touched"
    );
    let status = migration(&["-s", "other_schema", "status"], Some(&t.url));
    let listed = String::from_utf8_lossy(&status.stdout);
    assert_eq!(listed.matches("Applied").count(), 9, "{listed}");
    // Without -s, `public` has no migrations yet.
    let public = migration(&["status"], Some(&t.url));
    let listed = String::from_utf8_lossy(&public.stdout);
    assert_eq!(listed.matches("Pending").count(), 9, "{listed}");

    // `fresh` drops views of the chosen schema only, cascading to views built on them.
    t.exec("CREATE VIEW public.keep_me AS SELECT 1 AS x").await;
    t.exec("CREATE VIEW other_schema.pro AS SELECT user_id FROM other_schema.user_tiers")
        .await;
    let fresh = migration(&["-s", "other_schema", "fresh"], Some(&t.url));
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    assert_eq!(
        t.texts(
            "SELECT table_schema || '.' || table_name FROM information_schema.views \
             WHERE table_schema IN ('public', 'other_schema') ORDER BY 1"
        )
        .await,
        vec!["other_schema.user_tiers", "public.keep_me"]
    );

    let down = migration(&["-s", "other_schema", "down", "-n", "9"], Some(&t.url));
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(
        without_bookkeeping(snapshot_in(&t, "other_schema").await),
        Vec::<String>::new()
    );
}

/// Every object the PostgreSQL dry run names is qualified with the schema.
#[test]
fn postgres_dry_run_names_the_schema() {
    for (args, schema) in [
        (vec!["sql", "--backend", "postgres"], "public"),
        (
            vec!["-s", "tenant_1", "sql", "--backend", "postgres"],
            "tenant_1",
        ),
        (vec!["sql", "down", "--backend", "postgres"], "public"),
    ] {
        let out = migration(&args, None);
        assert!(out.status.success(), "{}", stderr(&out));
        let sql = String::from_utf8_lossy(&out.stdout);
        for table in ["users", "synced_sessions", "api_tokens", "stripe_events"] {
            assert!(
                sql.contains(&format!("\"{schema}\".\"{table}\"")),
                "{table} in {schema}: {sql}"
            );
        }
        assert!(
            sql.contains(&format!("\"{schema}\".\"user_tiers\"")),
            "{sql}"
        );
        for line in sql.lines().filter(|l| !l.starts_with("--")) {
            for object in [
                "users",
                "synced_sessions",
                "api_tokens",
                "stripe_events",
                "user_tiers",
            ] {
                let bare = format!("\"{object}\"");
                for (at, _) in line.match_indices(&bare) {
                    assert!(
                        line[..at].ends_with(&format!("\"{schema}\".")),
                        "unqualified {bare}: {line}"
                    );
                }
            }
            assert_names_schema(line, schema);
        }
    }
}

/// Whatever a statement names after `TABLE`, `ON`, `REFERENCES`, `FROM`, `VIEW`, `DROP INDEX`
/// or `ALTER INDEX` is schema-qualified, so a new migration that forgets `schema::table` fails
/// here. (`CREATE INDEX "name"` cannot be qualified: the index goes where its table is.)
fn assert_names_schema(line: &str, schema: &str) {
    let qualified = format!("\"{schema}\".");
    for keyword in [
        " TABLE ",
        " ON ",
        " REFERENCES ",
        " FROM ",
        " VIEW ",
        "DROP INDEX ",
        "ALTER INDEX ",
    ] {
        for (at, _) in line.match_indices(keyword) {
            let mut rest = &line[at + keyword.len()..];
            for noise in ["CONCURRENTLY ", "IF NOT EXISTS ", "IF EXISTS "] {
                rest = rest.strip_prefix(noise).unwrap_or(rest);
            }
            assert!(
                !rest.starts_with('"') || rest.starts_with(&qualified),
                "unqualified name after {keyword:?}: {line}"
            );
        }
    }
}
