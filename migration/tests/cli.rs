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

/// How many migrations this build has: the counts below follow the list in `lib.rs`.
fn migration_count() -> usize {
    use migration::MigratorTrait;
    migration::Migrator::migrations().len()
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
        Some(&support::url_on(
            Backend::Postgres,
            Some("no_such_role"),
            "postgres",
        )),
    );
    assert_clear_error(&pg, "refused the credentials");
    let my = migration(
        &["status"],
        Some(&support::url_on(
            Backend::MySql,
            Some("root:wrong-password"),
            "mysql",
        )),
    );
    assert_clear_error(&my, "refused the credentials");
}

#[test]
fn missing_database_is_named() {
    let pg = migration(
        &["status"],
        Some(&support::url_on(Backend::Postgres, None, "no_such_db_here")),
    );
    assert_clear_error(&pg, "does not exist");
    let my = migration(
        &["status"],
        Some(&support::url_on(Backend::MySql, None, "no_such_db_here")),
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
    an_interrupted_fresh_never_hides_a_lost_view,
    status_reports_drift_and_repair_restores_it,
    no_drift_after_any_number_of_migrations_either_way,
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
        "m010_subscriptions",
        "m011_past_due_since",
        "m012_price_grants_pro",
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
        vec![migration_count().to_string()]
    );
    // Created once, under the lock, by whichever migrator came first.
    assert_eq!(
        t.texts("SELECT count(*) FROM migration_checksums").await,
        vec![migration_count().to_string()]
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

/// SIGKILL the migrator before every statement of every migration in `migrations()`, `up`
/// and `down`, on every backend; run it again and compare with a clean run: the schema equal,
/// the rows that were there untouched. Generic over the list, so every later migration is
/// covered with no test code of its own. One test per backend and direction, so the harness
/// runs them side by side.
macro_rules! killed_at_any_statement {
    ($($test:ident: $backend:ident, $direction:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let names: Vec<String> = <migration::Migrator as migration::MigratorTrait>::migrations()
                .iter()
                .map(|m| migration::MigrationName::name(m.as_ref()).to_owned())
                .collect();
            for (index, name) in names.iter().enumerate() {
                killed_at_any_statement_of(Backend::$backend, name, index as u32 + 1, $direction)
                    .await;
            }
        }
    )*};
}

killed_at_any_statement! {
    killed_in_any_migration_up_postgres_recovers: Postgres, "up";
    killed_in_any_migration_down_postgres_recovers: Postgres, "down";
    killed_in_any_migration_up_mysql_recovers: MySql, "up";
    killed_in_any_migration_down_mysql_recovers: MySql, "down";
    killed_in_any_migration_up_sqlite_recovers: Sqlite, "up";
    killed_in_any_migration_down_sqlite_recovers: Sqlite, "down";
}

async fn killed_at_any_statement_of(backend: Backend, name: &str, version: u32, direction: &str) {
    let (before_it, with_it) = ((version - 1).to_string(), version.to_string());
    let backend_name = match backend {
        Backend::Postgres => "postgres",
        Backend::MySql => "mysql",
        Backend::Sqlite => "sqlite",
    };
    let reference = TestDb::new(backend).await;
    assert!(
        version == 1
            || migration(&["up", "-n", &before_it], Some(&reference.url))
                .status
                .success()
    );
    let before = without_bookkeeping(snapshot(&reference).await);
    let clean_up = migration(&["up", "-n", "1"], Some(&reference.url));
    assert!(clean_up.status.success(), "{}", stderr(&clean_up));
    let after = without_bookkeeping(snapshot(&reference).await);
    let clean_down = migration(&["down", "-n", "1"], Some(&reference.url));
    assert!(clean_down.status.success(), "{}", stderr(&clean_down));
    // The steps a clean run skips (their probes hold already: cleanups of an interrupted
    // run, repairs for databases an older version migrated): the pause hook never sees
    // their statements.
    let clean_run = if direction == "up" {
        &clean_up
    } else {
        &clean_down
    };
    let skipped_steps: Vec<String> = stderr(clean_run)
        .lines()
        .filter(|l| l.contains("(already done, skipped)"))
        .filter_map(|l| l.split(" step ").nth(1))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect();
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
            && !l.starts_with("SET TRANSACTION")
    };
    let cleanup_len = |sql: &str| {
        sql.split("-- step ")
            .filter(|step| {
                step.split(':')
                    .next()
                    .is_some_and(|number| skipped_steps.iter().any(|s| s == number))
            })
            .map(|step| step.lines().skip(1).filter(is_statement).count())
            .sum::<usize>()
    };
    let plan = |direction: &str| {
        let sql = dry_run(direction);
        (sql.lines().filter(is_statement).count(), cleanup_len(&sql))
    };

    let (statements, cleanup) = plan(direction);
    // Where the migration has no statement on this backend (m008 on MySQL and SQLite, m009
    // on PostgreSQL and SQLite), there is nothing to kill it before.
    let mut reached = 0;
    for n in 0..statements {
        let t = TestDb::new(backend).await;
        let target = if direction == "up" {
            &before_it
        } else {
            &with_it
        };
        assert!(
            target == "0"
                || migration(&["up", "-n", target], Some(&t.url))
                    .status
                    .success()
        );
        // Rows in users and sessions, for the migrations after m002, which made both tables
        // (frozen history); m001 and m002 themselves are compared by schema.
        let seeded = version > 2;
        let (users, sessions, checksum) = match backend {
            Backend::Postgres => (
                "INSERT INTO users (email) SELECT 'u' || g || '@x.test' FROM generate_series(1, 200) g",
                "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) SELECT id, 'c', 'd', 'p' || id FROM users",
                "SELECT md5(string_agg(concat_ws('|', u.id, u.email, s.id, s.payload), ',' ORDER BY u.id, s.id)) \
                 FROM users u JOIN synced_sessions s ON s.user_id = u.id",
            ),
            Backend::Sqlite => (
                "INSERT INTO users (email) WITH RECURSIVE g(n) AS \
                 (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 200) \
                 SELECT 'u' || n || '@x.test' FROM g",
                "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) SELECT id, 'c', 'd', 'p' || id FROM users",
                "SELECT group_concat(r, ',') FROM (SELECT u.id || '|' || u.email || '|' || s.id || '|' || s.payload AS r \
                 FROM users u JOIN synced_sessions s ON s.user_id = u.id ORDER BY u.id, s.id)",
            ),
            Backend::MySql => (
                "INSERT INTO users (email) WITH RECURSIVE g(n) AS \
                 (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 200) \
                 SELECT concat('u', n, '@x.test') FROM g",
                "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) SELECT id, 'c', 'd', concat('p', id) FROM users",
                "SELECT md5(group_concat(concat_ws('|', u.id, u.email, s.id, s.client_id, s.payload) \
                 ORDER BY u.id, s.id SEPARATOR ',')) FROM users u JOIN synced_sessions s ON s.user_id = u.id",
            ),
        };
        // Events too, from m007 on: m010's backfills walk stripe_events by ranges, and a
        // ranged statement runs only when its table has rows.
        let events = match backend {
            Backend::MySql => {
                "INSERT INTO stripe_events (id, event_type, created, customer_id, subscription_id, status) \
                 SELECT concat('evt_', id), 'customer.subscription.updated', id, concat('cus_', id), \
                 concat('sub_', id), 'active' FROM users"
            }
            _ => {
                "INSERT INTO stripe_events (id, event_type, created, customer_id, subscription_id, status) \
                 SELECT 'evt_' || id, 'customer.subscription.updated', id, 'cus_' || id, \
                 'sub_' || id, 'active' FROM users"
            }
        };
        let rows_before = if seeded {
            t.exec(users).await;
            t.exec(sessions).await;
            if version > 7 {
                t.exec(events).await;
            }
            t.texts(checksum).await
        } else {
            Vec::new()
        };

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
        if seeded {
            assert_eq!(
                t.texts(checksum).await,
                rows_before,
                "{name} {direction} killed at {n} changed rows"
            );
        }
    }
    assert!(
        reached + cleanup >= statements,
        "{name} {direction}: killed at only {reached} of {statements} statements"
    );
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
    let mut retry = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "-u", &t.url])
        .env("MIGRATION_LOCK_TIMEOUT_MS", "20")
        .env("MIGRATION_LOCK_ATTEMPTS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn migrator");
    // Release the lock only once the migrator says it met it: a fixed sleep here raced a
    // slow process start on a loaded CI machine (the lock was gone before the first try).
    let met = read_stderr_until(&mut retry, "retrying in");
    blocker.commit().await.expect("release");
    let out = retry.wait_with_output().expect("wait");
    let err = format!("{met}{}", stderr(&out));
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Migration 'm006_billing_fields' has been applied"),
        "{err}"
    );
}

/// stdout and stderr together: a password must appear in neither.
fn all_output(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(output)
    )
}

#[test]
fn passwords_are_never_printed() {
    // (URL, secrets it holds). Each fails in its own way: malformed, unreachable, refused.
    let pg = |userinfo, path| support::url_on(Backend::Postgres, userinfo, path);
    let my = |userinfo, path| support::url_on(Backend::MySql, userinfo, path);
    let cases: &[(String, &[&str])] = &[
        (
            "postgres://root:s3cr/et@127.0.0.1:1/x".into(),
            &["s3cr", "et@"],
        ),
        ("postgres://root:1234/x@127.0.0.1:1/x".into(), &["1234"]),
        (pg(None, "no_such_db_here?password=hunter2"), &["hunter2"]),
        (
            pg(
                Some("no_such_role"),
                "postgres?sslpassword=keypass&password=hunter3",
            ),
            &["keypass", "hunter3"],
        ),
        (
            "postgres:no_such_role:hunter4@127.0.0.1:5432/x".into(),
            &["hunter4"],
        ),
        (my(Some("root:hunter5"), "mysql"), &["hunter5"]),
        (
            my(Some("root:hunter6"), "").replacen("mysql:", "mariadb:", 1),
            &["hunter6"],
        ),
        (
            "postgres://u:p%40ss%2Fw@127.0.0.1:1/x".into(),
            &["p%40ss", "p@ss"],
        ),
    ];
    for (url, secrets) in cases {
        let out = migration(&["status", "--connect-timeout", "1"], Some(url));
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(1), "{url}: {text}");
        for secret in *secrets {
            assert!(!text.contains(secret), "{url} printed {secret:?}:\n{text}");
        }
    }
}

#[test]
fn help_hides_the_database_url_from_the_environment() {
    for args in [&["--help"][..], &["status", "--help"], &["up", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_migration"))
            .args(args)
            .env("DATABASE_URL", "postgres://app:hunter2@h/db")
            .output()
            .expect("run migration --help");
        let text = all_output(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("DATABASE_URL"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "{args:?} printed the password:\n{text}"
        );
    }
}

/// Another migrator (here: the test) holds the lock; the waiting message names the database
/// without its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_lock_does_not_print_the_password_postgres() {
    use sea_orm::ConnectionTrait;
    let t = TestDb::new(Backend::Postgres).await;
    let holder = support::connect(&t.url).await;
    holder
        .execute_unprepared(
            "SELECT pg_advisory_lock(hashtext('billing-migrator'), hashtext(current_database()))",
        )
        .await
        .expect("hold the migrator lock");
    let url = format!("{}?password=hunter2", t.url);
    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "-u", &url])
        .env("MIGRATION_LOCK_WAIT_SECS", "1")
        .output()
        .expect("run migrator");
    let text = all_output(&out);
    assert_clear_error(&out, "another migrator has held the migration lock");
    assert!(text.contains("waiting for the migration lock on"), "{text}");
    assert!(text.contains(&t.name), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

on_every_backend!(status_and_sql_never_write);

/// `status` and `sql` only read: on an empty database they leave no `seaql_migrations`.
async fn status_and_sql_never_write(backend: Backend) {
    let t = TestDb::new(backend).await;
    let status = migration(&["status"], Some(&t.url));
    assert!(status.status.success(), "{}", stderr(&status));
    let listed = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(
        listed.matches("Pending").count(),
        migration_count(),
        "{listed}"
    );
    let sql = migration(&["sql"], Some(&t.url));
    assert!(sql.status.success(), "{}", stderr(&sql));
    assert!(
        String::from_utf8_lossy(&sql.stdout).contains("-- m001_create_users up"),
        "{}",
        stderr(&sql)
    );
    assert_eq!(
        snapshot(&t).await,
        Vec::<String>::new(),
        "status or sql wrote"
    );
}

/// A read-only SQLite file (`mode=ro`, which holds even for root, who ignores file modes).
#[test]
fn status_reads_a_read_only_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("billing-ro-{}", support::random_name()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("db.sqlite");
    let rw = format!("sqlite://{}?mode=rwc", file.display());
    assert!(migration(&["up", "-n", "2"], Some(&rw)).status.success());
    let ro = format!("sqlite://{}?mode=ro", file.display());
    let out = migration(&["status"], Some(&ro));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(listed.matches("Applied").count(), 2, "{listed}");
    assert_eq!(
        listed.matches("Pending").count(),
        migration_count() - 2,
        "{listed}"
    );
    let sql = migration(&["sql"], Some(&ro));
    assert!(sql.status.success(), "{}", stderr(&sql));
    // Empty and read-only: nothing applied, and nothing created.
    let empty = dir.join("empty.sqlite");
    std::fs::File::create(&empty).unwrap();
    let out = migration(
        &["status"],
        Some(&format!("sqlite://{}?mode=ro", empty.display())),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "status wrote");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mysql_url_without_a_database_fails_at_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "-u", "mysql://root@127.0.0.1:3306"])
        .env("MIGRATION_LOCK_WAIT_SECS", "1")
        .output()
        .expect("run migrator");
    assert_clear_error(&out, "names no database");
    assert!(!stderr(&out).contains("waiting"), "{}", stderr(&out));
}

/// `sqlite:////abs/...` from another working directory takes the lock beside the database:
/// a migrator started elsewhere waits for the one holding it.
#[test]
fn sqlite_lock_is_beside_the_database_whatever_the_working_directory() {
    let dir = std::env::temp_dir().join(format!("billing-lock-{}", support::random_name()));
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let file = dir.join("db.sqlite");
    let holder = std::fs::File::create(dir.join("db.sqlite.migrate-lock")).unwrap();
    holder.lock().expect("hold the lock file");
    let url = format!("sqlite:///{}?mode=rwc", file.display());
    assert!(url.starts_with("sqlite:////"), "{url}");
    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "-u", &url])
        .current_dir(&elsewhere)
        .env("MIGRATION_LOCK_WAIT_SECS", "1")
        .output()
        .expect("run migrator");
    assert_clear_error(&out, "another migrator has held the migration lock");
    let strays: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().collect();
    assert!(
        strays.is_empty(),
        "files made in the working directory: {strays:?}"
    );
    drop(holder);
    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "-u", &url])
        .current_dir(&elsewhere)
        .output()
        .expect("run migrator");
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_schema_is_unset_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "--connect-timeout", "2", "-u", &t.url])
        .env("DATABASE_SCHEMA", "")
        .output()
        .expect("run migrator");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        t.texts("SELECT count(*) FROM public.seaql_migrations")
            .await,
        vec![migration_count().to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_schema_is_named_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    for command in ["status", "up"] {
        let out = migration(
            &[command, "--connect-timeout", "2", "-s", "no_such_schema"],
            Some(&t.url),
        );
        assert_clear_error(&out, "schema \"no_such_schema\" does not exist");
    }
}

/// A migrator started with `MIGRATION_PAUSE_BEFORE=pause`, once it says it paused there.
/// A line on its stdin resumes it.
fn spawn_paused(args: &[&str], url: &str, pause: &str) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(args)
        .args(["-u", url])
        .env("MIGRATION_PAUSE_BEFORE", pause)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn migrator");
    read_stderr_until(&mut child, "paused before");
    child
}

/// Reads `child`'s stderr until a line contains `marker` and returns all it read; the rest
/// stays with the child (for `wait_with_output`). A child that stays silent for a minute is
/// killed and the test fails, rather than hanging the whole run.
fn read_stderr_until(child: &mut std::process::Child, marker: &str) -> String {
    let stderr = child.stderr.take().expect("stderr is piped");
    let wanted = marker.to_owned();
    let (found, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut read = String::new();
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            read.push_str(&line);
            if line.contains(&wanted) {
                // What the reader holds beyond the marker's line belongs to the caller too.
                read.push_str(&String::from_utf8_lossy(reader.buffer()));
                let _ = found.send(Ok((reader.into_inner(), read)));
                return;
            }
            line.clear();
        }
        let _ = found.send(Err(read));
    });
    match seen.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(Ok((rest, read))) => {
            child.stderr = Some(rest);
            read
        }
        Ok(Err(read)) => panic!("the process ended before saying {marker:?}:\n{read}"),
        Err(_) => {
            let _ = child.kill();
            panic!("no {marker:?} from the process within 60 s")
        }
    }
}

fn resume(child: &mut std::process::Child) {
    use std::io::Write;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"\n").expect("resume the migrator");
}

/// The number of sessions holding an advisory lock on this PostgreSQL database.
async fn advisory_locks(t: &TestDb) -> Vec<String> {
    t.texts(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await
}

/// The reproduction: with `idle_session_timeout` on the database, the idle lock
/// connection was closed while the migrator worked, and with it the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_outlives_idle_session_timeout_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    let version: i64 = t
        .texts("SELECT current_setting('server_version_num')")
        .await[0]
        .parse()
        .expect("server_version_num");
    if version < 140_000 {
        // PostgreSQL 13 has no idle_session_timeout, so nothing can close the idle lock
        // session this way; the migrator's own `SET` of it must not fail there either.
        assert!(migration(&["up"], Some(&t.url)).status.success());
        return;
    }
    // Only sessions opened from now on get it; the test's own were opened before.
    t.exec(&format!(
        "ALTER DATABASE {} SET idle_session_timeout = '1s'",
        t.name
    ))
    .await;
    let mut child = spawn_paused(&["up"], &t.url, "m001_create_users:up:0");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let held = advisory_locks(&t).await;
    resume(&mut child);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        held,
        vec!["1"],
        "the lock vanished while the migrator was paused"
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        t.texts("SELECT count(*) FROM seaql_migrations").await,
        vec![migration_count().to_string()]
    );
}

on_every_backend!(a_step_done_meanwhile_is_not_an_error);

/// Another migrator (whose lock overlapped ours) or a person finishes a step between our
/// probe and our statement: we fail on "already exists", ask the probe again, and go on.
async fn a_step_done_meanwhile_is_not_an_error(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up", "-n", "5"], Some(&t.url)).status.success());
    let dialect = match backend {
        Backend::Postgres => "postgres",
        Backend::MySql => "mysql",
        Backend::Sqlite => "sqlite",
    };
    let plan = migration(
        &[
            "sql",
            "--backend",
            dialect,
            "--migration",
            "m006_billing_fields",
        ],
        None,
    );
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    let first_step: Vec<&str> = plan
        .lines()
        .skip_while(|l| !l.starts_with("-- step 1/"))
        .skip(1)
        .take_while(|l| !l.starts_with("-- step 2/"))
        .filter(|l| !l.starts_with("BEGIN") && !l.starts_with("COMMIT") && !l.starts_with("SET "))
        .collect();
    assert!(!first_step.is_empty(), "{plan}");

    let mut child = spawn_paused(&["up"], &t.url, "m006_billing_fields:up:0");
    for sql in &first_step {
        t.exec(sql.trim_end_matches(';')).await;
    }
    resume(&mut child);
    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("done meanwhile"), "{err}");
    assert!(
        err.contains("Migration 'm006_billing_fields' has been applied"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lock_stops_the_migrator_before_its_next_step_postgres() {
    a_lost_lock_stops_the_migrator(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lock_stops_the_migrator_before_its_next_step_mysql() {
    a_lost_lock_stops_the_migrator(Backend::MySql).await;
}

/// PostgreSQL: ends the session that holds the migrator's advisory lock, as a proxy, an idle
/// timeout or an administrator would.
async fn terminate_lock_session(t: &TestDb) {
    let killed = t
        .texts(
            "SELECT pg_terminate_backend(pid)::text FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await;
    assert_eq!(killed, vec!["true"], "one lock session, terminated");
    // pg_terminate_backend only signals: until the backend has exited, the session still
    // answers and still holds the lock (so no other migrator can have it), and a migrator
    // resumed then may rightly run a few more steps. A CI run on PostgreSQL 16 under load did
    // (steps 2 to 5). Wait until the lock is gone, as the test means "the session is gone".
    for _ in 0..200 {
        let held = t
            .texts(
                "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .await;
        if held == vec!["0"] {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the terminated lock session still holds its lock after 10 s");
}

/// The lock's connection is killed (as a proxy, an idle timeout or an administrator would)
/// while the migrator works: it finishes the step in hand, then stops with a clear error.
async fn a_lost_lock_stops_the_migrator(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up", "-n", "5"], Some(&t.url)).status.success());
    let mut child = spawn_paused(&["up"], &t.url, "m006_billing_fields:up:0");
    match backend {
        Backend::Postgres => {
            terminate_lock_session(&t).await;
        }
        _ => {
            let holder = t
                .texts("SELECT IS_USED_LOCK(LEFT(CONCAT('billing-migrator:', DATABASE()), 64))")
                .await;
            assert_eq!(holder.len(), 1);
            t.exec(&format!("KILL {}", holder[0])).await;
        }
    }
    resume(&mut child);
    let out = child.wait_with_output().expect("wait");
    assert_clear_error(&out, "lost the migration lock");
    let err = stderr(&out);
    // Step 1 was under way when the lock went; step 2 never started.
    assert!(
        err.contains("resumed before m006_billing_fields:up:0"),
        "{err}"
    );
    assert!(!err.contains("m006_billing_fields up step 2/"), "{err}");
    assert!(!err.contains("has been applied"), "{err}");
}

/// `mYYYYMMDD_HHMMSS_name`, the only module names `sea-orm-cli migrate generate` keeps.
fn stock_shaped(module: &str) -> bool {
    let bytes = module.as_bytes();
    bytes.len() > 17
        && bytes[0] == b'm'
        && bytes[1..9].iter().all(u8::is_ascii_digit)
        && bytes[9] == b'_'
        && bytes[10..16].iter().all(u8::is_ascii_digit)
        && bytes[16] == b'_'
        && module[17..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What `generate` does to lib.rs, checked without it (the test below runs it, in CI): it
/// rebuilds the list from the first `vec![` to the last line ending in `]`, out of the `mod`
/// lines of stock-shaped names. So those must be exactly the list, in order, and nothing may
/// follow the list.
#[test]
fn lib_rs_keeps_the_shape_sea_orm_cli_generate_rewrites() {
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    assert_eq!(lib.matches("vec![").count(), 1, "one vec! only, the list");
    let list = &lib[lib.find("vec![").unwrap()..];
    let list = &list[..list.rfind("]\n").expect("the list's closing bracket")];
    let listed: Vec<&str> = list
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.trim()
                .strip_prefix("Box::new(")
                .and_then(|rest| rest.strip_suffix("::Migration),"))
                .unwrap_or_else(|| panic!("not a migration line in the list: {line:?}"))
        })
        .collect();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|line| {
            let line = line.trim_start_matches("pub ");
            line.strip_prefix("mod ")?.strip_suffix(';')
        })
        .filter(|module| stock_shaped(module))
        .collect();
    assert_eq!(
        listed, declared,
        "the list and the stock-shaped `mod` lines differ"
    );
    use migration::MigratorTrait;
    assert_eq!(
        listed.len(),
        migration::Migrator::migrations().len(),
        "every migration is in the list"
    );
}

/// Copies the workspace's sources (no build output, no git, no local database).
fn copy_sources(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if matches!(name.to_str(), Some("target" | ".git" | "data")) {
            continue;
        }
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_sources(&entry.path(), &to.join(&name));
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name)).expect("copy file");
        }
    }
}

/// `sea-orm-cli migrate generate` on a copy of the workspace keeps m001-m008 and adds a
/// migration that builds and runs on every backend; the dry run says it cannot print it.
/// Ignored by default: it needs sea-orm-cli 2.0.4, and it builds the copy (seconds after
/// `cargo test --workspace`, minutes after a narrower build). `.ci/run` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds a copy of the workspace and needs sea-orm-cli; .ci/run runs it"]
async fn sea_orm_cli_generate_adds_a_migration_that_builds_and_runs() {
    use std::path::Path;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let copy = std::env::temp_dir().join(format!("billing-generate-{}", support::random_name()));
    copy_sources(workspace, &copy);
    let original_lib = std::fs::read_to_string(workspace.join("migration/src/lib.rs")).unwrap();

    let out = Command::new("sea-orm-cli")
        .args(["migrate", "generate", "add_gen_probe"])
        .current_dir(&copy)
        .output()
        .expect("run sea-orm-cli (cargo install sea-orm-cli --version 2.0.4 --locked)");
    assert!(out.status.success(), "{}", all_output(&out));
    let src = copy.join("migration/src");
    let generated = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("_add_gen_probe.rs"))
        .expect("the generated migration file");
    let name = generated
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    // Every line of lib.rs is still there, in order, plus the two for the new migration.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut remaining = lib.lines();
    for line in original_lib.lines() {
        assert!(
            remaining.any(|l| l == line),
            "generate dropped or moved {line:?}:\n{lib}"
        );
    }
    assert!(lib.contains(&format!("\nmod {name};\n")), "{lib}");
    assert!(
        lib.contains(&format!("Box::new({name}::Migration),\n        ]")),
        "{lib}"
    );

    // The stock template's bodies are todo!(): fill them in as a user would.
    let body = std::fs::read_to_string(&generated)
        .unwrap()
        .replace("_manager", "manager")
        .replacen(
            "todo!();",
            "manager.create_table(Table::create().table(Alias::new(\"gen_probe\")).col(pk_auto(Alias::new(\"id\"))).to_owned()).await",
            1,
        )
        .replacen(
            "todo!();",
            "manager.drop_table(Table::drop().table(Alias::new(\"gen_probe\")).to_owned()).await",
            1,
        );
    std::fs::write(&generated, body).unwrap();

    // The copy builds into this build's own target folder, so it compiles only its own crates
    // (cargo holds no lock on the folder while tests run). `--workspace` resolves dependency
    // features as `cargo test --workspace` did (`-p migration` would pick a narrower set and
    // rebuild them all). Cargo names a path package's build output after its path inside the
    // workspace, the same in the copy, so the copy's package is renamed: under its own name
    // it cannot overwrite this workspace's `migration` library or binary.
    let rename = |file: &str, from: &str, to: &str| {
        let path = copy.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    let renamed = "name = \"migration-generated\"";
    rename(
        "migration/Cargo.toml",
        "name = \"migration\"\nversion",
        &format!("{renamed}\nversion"),
    );
    rename(
        "migration/Cargo.toml",
        "[[bin]]\nname = \"migration\"",
        &format!("[[bin]]\n{renamed}"),
    );
    for (file, path) in [
        ("Cargo.toml", "migration"),
        ("api/Cargo.toml", "../migration"),
    ] {
        let from = format!("migration = {{ path = \"{path}\" }}");
        let to = format!("migration = {{ path = \"{path}\", package = \"migration-generated\" }}");
        rename(file, &from, &to);
    }
    rename(
        "Cargo.lock",
        "name = \"migration\"\n",
        &format!("{renamed}\n"),
    );
    rename(
        "Cargo.lock",
        " \"migration\",\n",
        " \"migration-generated\",\n",
    );
    // The renamed package has no path dependency of its own: one (say `entity`) would keep
    // our name and path, and the copy's build would overwrite our artifacts of it.
    let manifest = std::fs::read_to_string(copy.join("migration/Cargo.toml")).unwrap();
    assert!(!manifest.contains("path = \".."), "{manifest}");
    // The profile this test was built with: its binaries sit in target/<debug|release|name>.
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_migration"))
        .parent()
        .expect("target/<profile>");
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(name) => name,
    };
    let build = support::cargo()
        .args(["build", "--locked", "--workspace", "--profile", profile])
        .args(["--bin", "migration-generated"])
        .current_dir(&copy)
        .env("CARGO_TARGET_DIR", profile_dir.parent().expect("target"))
        .status()
        .expect("cargo build");
    assert!(build.success(), "the generated migration does not build");
    let bin = profile_dir.join("migration-generated");
    let run = |args: &[&str], url: &str| {
        Command::new(&bin)
            .args(args)
            .args(["-u", url])
            .output()
            .expect("run the copy's migrator")
    };

    for backend in [Backend::Postgres, Backend::MySql, Backend::Sqlite] {
        let t = TestDb::new(backend).await;
        let up = run(&["up"], &t.url);
        let err = stderr(&up);
        assert!(up.status.success(), "{backend:?}: {err}");
        assert!(
            err.contains(&format!("Migration '{name}' has been applied")),
            "{backend:?}: {err}"
        );
        assert_eq!(t.texts("SELECT count(*) FROM gen_probe").await, vec!["0"]);
        let status = String::from_utf8_lossy(&run(&["status"], &t.url).stdout).into_owned();
        assert_eq!(
            status.matches("Applied").count(),
            migration_count() + 1,
            "{status}"
        );
        let down = run(&["down"], &t.url);
        assert!(down.status.success(), "{backend:?}: {}", stderr(&down));
        let status = String::from_utf8_lossy(&run(&["status"], &t.url).stdout).into_owned();
        assert!(
            status.contains(&name) && status.contains("Pending"),
            "{status}"
        );
    }

    let sql = Command::new(&bin)
        .args(["sql", "--backend", "postgres"])
        .output()
        .expect("run the copy's dry run");
    let printed = String::from_utf8_lossy(&sql.stdout);
    assert_clear_error(&sql, &format!("cannot print the SQL of {name}"));
    assert!(
        printed.contains("-- m008_deleted_at_index_by_id up (postgres)"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("-- {name} up (postgres): a plain MigrationTrait")),
        "{printed}"
    );
    let _ = std::fs::remove_dir_all(&copy);
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
        vec![migration_count().to_string()]
    );
}

/// Issue 17: `fresh` killed after its first drop. On PostgreSQL and SQLite the drop is one
/// transaction, so the schema is as it was, and `status` is clean. MariaDB commits each DROP:
/// `status` says what is missing, and `repair` restores it. Before, PostgreSQL lost the view
/// `user_tiers` for good while `status` said everything was applied.
async fn an_interrupted_fresh_never_hides_a_lost_view(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up"], Some(&t.url)).status.success());
    let clean = snapshot(&t).await;
    // Views go first: this pauses with `user_tiers` dropped and a table not yet.
    let mut child = spawn_paused(&["fresh"], &t.url, "fresh:drop:1");
    child.kill().expect("kill the paused migrator");
    let _ = child.wait();
    let status = migration(&["status"], Some(&t.url));
    let out = String::from_utf8_lossy(&status.stdout).into_owned();
    if backend == Backend::MySql {
        assert_eq!(status.status.code(), Some(1), "{out}{}", stderr(&status));
        assert!(out.contains("DRIFT: view user_tiers missing"), "{out}");
        let repair = migration(&["repair"], Some(&t.url));
        assert!(repair.status.success(), "{}", stderr(&repair));
    } else {
        assert!(status.status.success(), "{out}{}", stderr(&status));
        assert!(!out.contains("DRIFT"), "{out}");
    }
    assert_eq!(snapshot(&t).await, clean);
    assert!(migration(&["status"], Some(&t.url)).status.success());
}

/// Issue 17: a view and an index dropped by hand are reported by `status` (exit code 1, one
/// `DRIFT:` line each) and rebuilt by `repair`, after which `status` is clean.
async fn status_reports_drift_and_repair_restores_it(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up"], Some(&t.url)).status.success());
    let clean = snapshot(&t).await;
    let status = migration(&["status"], Some(&t.url));
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(!String::from_utf8_lossy(&status.stdout).contains("DRIFT"));

    t.exec("DROP VIEW user_tiers").await;
    t.exec(match backend {
        Backend::MySql => "DROP INDEX idx_users_stripe_customer ON users",
        _ => "DROP INDEX idx_users_stripe_customer",
    })
    .await;
    let status = migration(&["status"], Some(&t.url));
    let out = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_clear_error(
        &status,
        "2 object(s) that applied migrations made are missing",
    );
    let drift: Vec<&str> = out.lines().filter(|l| l.starts_with("DRIFT: ")).collect();
    assert_eq!(drift.len(), 2, "{out}");
    assert!(
        drift
            .iter()
            .any(|l| l.starts_with("DRIFT: view user_tiers missing")),
        "{out}"
    );
    assert!(
        drift
            .iter()
            .any(|l| l.starts_with("DRIFT: index idx_users_stripe_customer on users missing")),
        "{out}"
    );

    let repair = migration(&["repair"], Some(&t.url));
    assert!(repair.status.success(), "{}", stderr(&repair));
    assert_eq!(snapshot(&t).await, clean);
    let status = migration(&["status"], Some(&t.url));
    assert!(status.status.success(), "{}", stderr(&status));
    let again = migration(&["repair"], Some(&t.url));
    assert!(
        stderr(&again).contains("nothing to repair"),
        "{}",
        stderr(&again)
    );
}

/// The drift check reports nothing on a schema the migrations made: after each `up -n 1`
/// and each `down -n 1`, where later migrations replaced what earlier ones made (m008's
/// index, m011's view).
async fn no_drift_after_any_number_of_migrations_either_way(backend: Backend) {
    let t = TestDb::new(backend).await;
    let clean_status = |when: String| {
        let status = migration(&["status"], Some(&t.url));
        let out = String::from_utf8_lossy(&status.stdout).into_owned();
        assert!(status.status.success(), "{when}: {out}{}", stderr(&status));
        assert!(!out.contains("DRIFT"), "{when}: {out}");
    };
    for n in 1..=migration_count() {
        assert!(migration(&["up", "-n", "1"], Some(&t.url)).status.success());
        clean_status(format!("after {n} up"));
    }
    for n in 1..=migration_count() {
        assert!(
            migration(&["down", "-n", "1"], Some(&t.url))
                .status
                .success()
        );
        clean_status(format!("after {n} down"));
    }
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
    assert_eq!(
        listed.matches("Applied").count(),
        migration_count(),
        "{listed}"
    );
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
    assert_eq!(
        listed.matches("Applied").count(),
        migration_count(),
        "{listed}"
    );
    // Without -s, `public` has no migrations yet.
    let public = migration(&["status"], Some(&t.url));
    let listed = String::from_utf8_lossy(&public.stdout);
    assert_eq!(
        listed.matches("Pending").count(),
        migration_count(),
        "{listed}"
    );

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

    let down = migration(
        &[
            "-s",
            "other_schema",
            "down",
            "-n",
            &migration_count().to_string(),
        ],
        Some(&t.url),
    );
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

/// Without `//`, sqlx connects to its default host and takes the rest, password included, as
/// the database name, which the server prints back. Such URLs are refused before connecting.
#[test]
fn a_url_without_slashes_is_refused_without_printing_the_password() {
    for url in [
        "postgres:postgres:hunter2@127.0.0.1:5432/db",
        "postgresql:postgres:hunter2@127.0.0.1:5432/db",
        "mysql:root:hunter2@127.0.0.1:1/db",
        "mariadb:root:hunter2@127.0.0.1:1/db",
    ] {
        for command in ["status", "up"] {
            let out = Command::new(env!("CARGO_BIN_EXE_migration"))
                .args([command, "--connect-timeout", "1", "-u", url])
                // The role sqlx uses by default: the server answers, about the database.
                .env("PGUSER", "postgres")
                .output()
                .expect("run migrator");
            assert_clear_error(&out, "has no `//`");
            let text = all_output(&out);
            assert!(!text.contains("hunter2"), "{url} {command}:\n{text}");
        }
    }
}

/// With `host=` the server is named, so the URL is taken; the server's "database ... does not
/// exist" then quotes the userinfo, which is scrubbed from the message, in the `migration`
/// binary and on the path the `billing` binary opens its database by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_message_never_shows_the_password_postgres() {
    let (_, login, server) = support::server_parts(Backend::Postgres);
    let (host, port) = server.rsplit_once(':').unwrap_or((&server, "5432"));
    let (user, password) = login.split_once(':').unwrap_or((&login, ""));
    let url = &format!(
        "postgres:someone:hunter2@nowhere?host={host}&port={port}&user={user}&password={password}"
    );
    let out = migration(&["status", "--connect-timeout", "2"], Some(url));
    assert_clear_error(&out, "does not exist");
    assert!(
        !all_output(&out).contains("hunter2"),
        "{}",
        all_output(&out)
    );

    let parsed = migration::connect::resolve_url(Some(url)).expect("a host is named");
    let Err(failure) =
        migration::connect::open(&parsed, None, std::time::Duration::from_secs(2), 1).await
    else {
        panic!("connected to a database that does not exist");
    };
    assert!(
        matches!(
            failure,
            migration::connect::ConnectError::DatabaseMissing { .. }
        ),
        "{failure:?}"
    );
    let message = failure.to_string();
    assert!(message.contains("does not exist"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

/// A quoted schema is refused with a message saying what to give instead, rather than set
/// verbatim in `search_path` and checked unquoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_schema_is_refused_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    t.exec("CREATE SCHEMA \"Bill\"").await;
    assert!(
        migration(&["-s", "Bill", "up"], Some(&t.url))
            .status
            .success()
    );
    for command in ["status", "up"] {
        let out = Command::new(env!("CARGO_BIN_EXE_migration"))
            .args([command, "--connect-timeout", "2", "-u", &t.url])
            .env("DATABASE_SCHEMA", "\"Bill\"")
            .output()
            .expect("run migrator");
        assert_clear_error(&out, "give the bare name (Bill)");
    }
    let out = migration(&["-s", "Bill", "status"], Some(&t.url));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listed.matches("Applied").count(),
        migration_count(),
        "{listed}"
    );
}

/// A schema name with a quote and a comma is one schema, the one that exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_odd_schema_name_is_taken_literally_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    t.exec("CREATE SCHEMA \"Odd \"\"Sch,ema\"").await;
    let up = migration(&["-s", "Odd \"Sch,ema", "up"], Some(&t.url));
    assert!(up.status.success(), "{}", stderr(&up));
    assert_eq!(
        t.texts("SELECT count(*) FROM \"Odd \"\"Sch,ema\".seaql_migrations")
            .await,
        vec![migration_count().to_string()]
    );
    assert_eq!(
        snapshot(&t).await,
        Vec::<String>::new(),
        "public was touched"
    );
}

/// With no `-s`, `public` is the schema, and it is checked like a chosen one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_public_schema_is_named_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    t.exec("DROP SCHEMA public").await;
    for command in ["status", "up"] {
        let out = migration(&[command, "--connect-timeout", "2"], Some(&t.url));
        assert_clear_error(&out, "schema \"public\" does not exist");
    }
}

/// `status` and `sql` on a SQLite database that does not exist create nothing, not even its
/// folder.
#[test]
fn status_and_sql_create_no_sqlite_file_or_folder() {
    let dir = std::env::temp_dir().join(format!("billing-nofile-{}", support::random_name()));
    std::fs::create_dir_all(&dir).unwrap();
    for url in [
        "sqlite:newdir/sub/x.sqlite",
        "sqlite://newdir/sub/x.sqlite?mode=rwc",
    ] {
        for args in [&["status"][..], &["sql"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_migration"))
                .args(args)
                .args(["-u", url])
                .current_dir(&dir)
                .output()
                .expect("run migrator");
            assert_clear_error(&out, "does not exist");
            let made: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
            assert!(made.is_empty(), "{url} {args:?} wrote {made:?}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The lock is lost while a step of a migration in a transaction is under way, and what the
/// step creates appears meanwhile (as another migrator would make it): its "already exists"
/// aborts the transaction, so the step's probe cannot be asked again there. The error must
/// still say what happened: the lock was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lock_is_named_when_a_step_then_fails_on_already_exists_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    let mut child = spawn_paused(&["up"], &t.url, "m001_create_users:up:0");
    terminate_lock_session(&t).await;
    t.exec("CREATE TABLE public.users (id bigint PRIMARY KEY)")
        .await;
    resume(&mut child);
    let out = child.wait_with_output().expect("wait");
    assert_clear_error(&out, "lost the migration lock");
    assert!(
        !stderr(&out).contains("has been applied"),
        "{}",
        stderr(&out)
    );
}

/// m009's `MEDIUMTEXT` step copies `synced_sessions`. While a transaction has the table open
/// (here a read, as a long report would), a copy could never take its final lock: the step
/// waits without copying, then says why it stopped, instead of copying once per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_copy_waits_for_open_transactions_instead_of_copying_mysql() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let t = TestDb::new(Backend::MySql).await;
    assert!(migration(&["up", "-n", "8"], Some(&t.url)).status.success());
    // m009's first step, done by hand: its own locks are not what this test is about.
    t.exec(
        "ALTER TABLE synced_sessions MODIFY client_id varchar(100) \
         CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
    )
    .await;
    let reader = t.db.begin().await.expect("begin");
    reader
        .execute_unprepared("SELECT count(*) FROM synced_sessions")
        .await
        .expect("read");
    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "-n", "1", "-u", &t.url])
        .env("MIGRATION_LOCK_TIMEOUT_MS", "20")
        .env("MIGRATION_LOCK_ATTEMPTS", "3")
        .output()
        .expect("run migrator");
    assert_clear_error(&out, "the table copy for \"payload MEDIUMTEXT");
    let err = stderr(&out);
    assert!(err.contains("was not started"), "{err}");
    assert!(!err.contains("lock not granted"), "{err}");
    assert_eq!(
        err.matches("not starting the table copy").count(),
        2,
        "{err}"
    );
    reader.commit().await.expect("end the read");
    let out = migration(&["up", "-n", "1"], Some(&t.url));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A transaction that opens the table while the copy runs makes the copy lose its final lock
/// (after `lock_wait_timeout`, which MySQL counts in whole seconds, and the message says so):
/// the copy is thrown away and reported, not started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_copy_that_loses_its_final_lock_is_not_retried_mysql() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    use std::io::Write;
    let t = TestDb::new(Backend::MySql).await;
    assert!(migration(&["up", "-n", "8"], Some(&t.url)).status.success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["up", "-n", "1", "-u", &t.url])
        .env(
            "MIGRATION_PAUSE_BEFORE",
            "m009_session_client_id_binary:up:1",
        )
        .env("MIGRATION_LOCK_TIMEOUT_MS", "20")
        .env("MIGRATION_LOCK_ATTEMPTS", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn migrator");
    read_stderr_until(&mut child, "paused before");
    let reader = t.db.begin().await.expect("begin");
    reader
        .execute_unprepared("SELECT count(*) FROM synced_sessions")
        .await
        .expect("read");
    // Enough lines to resume every attempt the step might make.
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"\n\n\n").expect("resume");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    reader.commit().await.expect("end the read");
    assert_clear_error(&out, "is not retried");
    let err = stderr(&out);
    assert!(err.contains("within 1000 ms"), "{err}");
    assert_eq!(
        err.matches("resumed before").count(),
        1,
        "the table was copied more than once:\n{err}"
    );
    let out = migration(&["up", "-n", "1"], Some(&t.url));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Output to a pipe (a CI log, a file) carries no colour codes, even in verbose mode, where
/// levels and targets are printed.
#[tokio::test]
async fn logs_to_a_pipe_have_no_colour_codes() {
    let t = TestDb::new(Backend::Sqlite).await;
    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(["-v", "up", "-u", &t.url])
        .env_remove("DATABASE_URL")
        .env_remove("NO_COLOR")
        .output()
        .expect("run migration binary");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("DEBUG") || err.contains("INFO"), "{err}");
    assert!(!err.contains('\x1b'), "colour codes in:\n{err:?}");
}

on_every_backend!(
    checksums_are_recorded_with_each_migration_and_removed_by_down,
    checksums_of_a_database_migrated_before_them_are_backfilled,
    a_migration_changed_after_it_was_applied_is_flagged_and_refused,
    reset_and_fresh_keep_checksums_in_step,
);

fn sea_backend(backend: Backend) -> sea_orm::DbBackend {
    match backend {
        Backend::Postgres => sea_orm::DbBackend::Postgres,
        Backend::MySql => sea_orm::DbBackend::MySql,
        Backend::Sqlite => sea_orm::DbBackend::Sqlite,
    }
}

/// What this build's code sums to, as the migrator computes it.
fn current_checksum(backend: Backend, name: &str) -> String {
    let plan = migration::plan_of(name).expect("a planned migration");
    migration::checksum::of(plan, sea_backend(backend))
}

async fn recorded_checksums(t: &TestDb) -> Vec<String> {
    let versions = t
        .texts("SELECT version FROM migration_checksums ORDER BY version")
        .await;
    let sums = t
        .texts("SELECT checksum FROM migration_checksums ORDER BY version")
        .await;
    versions
        .iter()
        .zip(&sums)
        .map(|(version, sum)| format!("{version}={sum}"))
        .collect()
}

fn expected_checksums(backend: Backend, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|name| format!("{name}={}", current_checksum(backend, name)))
        .collect()
}

const FIRST_THREE: [&str; 3] = [
    "m001_create_users",
    "m002_create_synced_sessions",
    "m003_create_api_tokens",
];

async fn checksums_are_recorded_with_each_migration_and_removed_by_down(backend: Backend) {
    let t = TestDb::new(backend).await;
    let up = migration(&["up", "-n", "3"], Some(&t.url));
    assert!(up.status.success(), "{}", stderr(&up));
    assert_eq!(
        recorded_checksums(&t).await,
        expected_checksums(backend, &FIRST_THREE)
    );
    let down = migration(&["down"], Some(&t.url));
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(
        recorded_checksums(&t).await,
        expected_checksums(backend, &FIRST_THREE[..2])
    );
    let all = migration(&["up"], Some(&t.url));
    assert!(all.status.success(), "{}", stderr(&all));
    assert_eq!(
        t.texts("SELECT count(*) FROM migration_checksums").await,
        vec![migration_count().to_string()]
    );
}

/// A database applied before checksums existed has no table of them: the next `up` (with
/// nothing pending) records the sums of the code that runs now.
async fn checksums_of_a_database_migrated_before_them_are_backfilled(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up", "-n", "3"], Some(&t.url)).status.success());
    t.exec("DROP TABLE migration_checksums").await;
    let status = migration(&["status"], Some(&t.url));
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("CHANGED"),
        "an unrecorded migration is not a changed one"
    );
    let up = migration(&["up", "-n", "0"], Some(&t.url));
    assert!(up.status.success(), "{}", stderr(&up));
    assert!(
        stderr(&up).contains("recorded the checksum of m001_create_users"),
        "{}",
        stderr(&up)
    );
    assert_eq!(
        recorded_checksums(&t).await,
        expected_checksums(backend, &FIRST_THREE)
    );
    assert_eq!(
        t.texts("SELECT count(*) FROM seaql_migrations").await,
        vec!["3"],
        "-n 0 applied something"
    );
}

/// An edit to an applied migration shows as a recorded sum that is not the code's.
async fn a_migration_changed_after_it_was_applied_is_flagged_and_refused(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up", "-n", "3"], Some(&t.url)).status.success());
    t.exec(
        "UPDATE migration_checksums SET checksum = 'from-the-old-code' \
         WHERE version = 'm002_create_synced_sessions'",
    )
    .await;

    let status = migration(&["status"], Some(&t.url));
    assert!(status.status.success(), "{}", stderr(&status));
    let listed = String::from_utf8_lossy(&status.stdout).into_owned();
    let flagged: Vec<&str> = listed.lines().filter(|l| l.contains("CHANGED")).collect();
    assert_eq!(flagged.len(), 1, "{listed}");
    assert!(
        flagged[0].starts_with("m002_create_synced_sessions"),
        "{listed}"
    );

    let refused = migration(&["up"], Some(&t.url));
    assert_clear_error(&refused, "m002_create_synced_sessions changed after");
    assert!(
        stderr(&refused).contains("accept-checksum"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        t.texts("SELECT count(*) FROM seaql_migrations").await,
        vec!["3"],
        "up went past a changed migration"
    );
    // Its `down` is the edited code as much as its `up`: refused alike.
    for command in [&["down", "-n", "2"][..], &["reset"], &["refresh"]] {
        let refused = migration(command, Some(&t.url));
        assert_clear_error(&refused, "m002_create_synced_sessions changed after");
        assert_eq!(
            t.texts("SELECT count(*) FROM seaql_migrations").await,
            vec!["3"],
            "{command:?} ran past a changed migration"
        );
    }

    assert_clear_error(
        &migration(
            &["accept-checksum", "m009_session_client_id_binary"],
            Some(&t.url),
        ),
        "is not applied",
    );
    assert_clear_error(
        &migration(&["accept-checksum", "m099_nothing"], Some(&t.url)),
        "no migration named",
    );
    let accepted = migration(
        &["accept-checksum", "m002_create_synced_sessions"],
        Some(&t.url),
    );
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    assert_eq!(
        recorded_checksums(&t).await,
        expected_checksums(backend, &FIRST_THREE)
    );
    let up = migration(&["up"], Some(&t.url));
    assert!(up.status.success(), "{}", stderr(&up));
    assert_eq!(
        t.texts("SELECT count(*) FROM seaql_migrations").await,
        vec![migration_count().to_string()]
    );
}

async fn reset_and_fresh_keep_checksums_in_step(backend: Backend) {
    let t = TestDb::new(backend).await;
    assert!(migration(&["up"], Some(&t.url)).status.success());
    let reset = migration(&["reset"], Some(&t.url));
    assert!(reset.status.success(), "{}", stderr(&reset));
    // Like seaql_migrations, which SeaORM's reset drops: nothing of the migrator is left.
    let left = snapshot(&t).await;
    assert!(
        left.iter()
            .all(|line| !line.contains("migration_checksums")),
        "{left:?}"
    );
    assert!(migration(&["up", "-n", "2"], Some(&t.url)).status.success());
    t.exec("UPDATE migration_checksums SET checksum = 'stale'")
        .await;
    // `fresh` drops every table, ours too, and records anew what it applies.
    let fresh = migration(&["fresh"], Some(&t.url));
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    assert_eq!(
        t.texts("SELECT count(*) FROM migration_checksums WHERE checksum = 'stale'")
            .await,
        vec!["0"]
    );
    assert_eq!(
        t.texts("SELECT count(*) FROM migration_checksums").await,
        vec![migration_count().to_string()]
    );
}

/// With `-s`, the checksums live beside `seaql_migrations` in the chosen schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_live_in_the_chosen_schema_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    t.exec("CREATE SCHEMA tenant").await;
    let up = migration(&["up", "-n", "3", "-s", "tenant"], Some(&t.url));
    assert!(up.status.success(), "{}", stderr(&up));
    let count = |schema: &str| {
        format!(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = '{schema}' AND table_name = 'migration_checksums'"
        )
    };
    assert_eq!(t.texts(&count("tenant")).await, vec!["1"]);
    assert_eq!(t.texts(&count("public")).await, vec!["0"]);
    assert_eq!(
        t.texts("SELECT count(*) FROM tenant.migration_checksums")
            .await,
        vec!["3"]
    );
    let status = migration(&["status", "-s", "tenant"], Some(&t.url));
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("CHANGED"),
        "a schema other than public changed the sums"
    );
}

/// `migration status | grep -q …` and `migration sql | head` close the pipe before the output
/// ends: that ends the output quietly (exit 0), where `println!` panicked (exit 101, which CI's
/// `set -o pipefail` turned into a failure whenever grep won the race).
#[tokio::test]
async fn a_reader_that_closes_the_pipe_early_gets_no_panic() {
    let t = TestDb::new(Backend::Sqlite).await;
    let out = migration(&["up"], Some(&t.url));
    assert!(out.status.success(), "{}", stderr(&out));
    for args in [
        vec!["status", "-u", t.url.as_str()],
        vec!["sql", "up", "--backend", "postgres"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_migration"))
            .args(&args)
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run migration binary");
        // The reader goes away before the first line is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for migration");
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
    }
}

/// `migration fresh 2>&1 | head -5`: the reader of the log (stderr) goes away first. The
/// migrator finishes its work and exits without a panic (101 before: tracing's writer
/// reported its failed write with `eprintln!`, which panics on a closed stderr), for a
/// command that succeeds and for one that fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_gets_no_panic() {
    let t = TestDb::new(Backend::Sqlite).await;
    for (args, succeeds) in [
        (vec!["fresh", "-u", t.url.as_str()], true),
        (
            vec!["down", "-n", "1", "-u", "postgres://nobody@127.0.0.1:1/x"],
            false,
        ),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_migration"))
            .args(&args)
            .env_remove("DATABASE_URL")
            .env("DATABASE_CONNECT_TIMEOUT", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run migration binary");
        drop(child.stderr.take());
        let status = child.wait().expect("wait for migration");
        assert_eq!(status.success(), succeeds, "{args:?}: {status:?}");
        assert_ne!(status.code(), Some(101), "{args:?} panicked");
    }
}

/// Issue 17's reproduction: migrator A waits inside `CREATE UNIQUE INDEX CONCURRENTLY` (an old
/// snapshot holds the build), its lock session is terminated, and migrator B takes the lock.
/// B saw A's index INVALID and dropped it while A built it ("tuple concurrently updated", or
/// `users` left without its unique index). Now B waits for A's build to end, then finds the
/// index valid and skips the step; A stops at its next step with "lost the migration lock".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrator_that_lost_its_lock_mid_build_keeps_its_index_postgres() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let t = TestDb::new(Backend::Postgres).await;
    assert!(migration(&["up", "-n", "5"], Some(&t.url)).status.success());
    t.exec(
        "INSERT INTO users (email) SELECT 'u' || g || '@x.test' FROM generate_series(1, 2000) g",
    )
    .await;
    // A snapshot older than any build: CREATE INDEX CONCURRENTLY waits for it to end.
    let old = support::connect(&t.url).await;
    let snapshot = old
        .begin_with_config(Some(sea_orm::IsolationLevel::RepeatableRead), None)
        .await
        .expect("begin");
    snapshot
        .execute_unprepared("SELECT count(*) FROM synced_sessions")
        .await
        .expect("take a snapshot");

    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_migration"))
            .args(["up", "-n", "1", "-u", &t.url])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn migrator")
    };
    let a = spawn();
    let building = "SELECT count(*) FROM pg_stat_progress_create_index p JOIN pg_database d \
                    ON d.oid = p.datid WHERE d.datname = current_database()";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while t.texts(building).await != vec!["1".to_owned()] {
        assert!(
            std::time::Instant::now() < deadline,
            "A never started its build"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    terminate_lock_session(&t).await;

    let b = spawn();
    // B has the lock; give it time to look at A's index (the old code dropped it then).
    while advisory_locks(&t).await != vec!["1".to_owned()] {
        assert!(
            std::time::Instant::now() < deadline,
            "B never took the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    snapshot.commit().await.expect("end the old snapshot");

    let a_out = a.wait_with_output().expect("wait A");
    let b_out = b.wait_with_output().expect("wait B");
    assert!(!a_out.status.success(), "A must stop: {}", stderr(&a_out));
    assert!(
        stderr(&a_out).contains("lost the migration lock"),
        "{}",
        stderr(&a_out)
    );
    assert!(b_out.status.success(), "B: {}", stderr(&b_out));
    assert!(
        stderr(&b_out).contains("is building index"),
        "{}",
        stderr(&b_out)
    );
    assert_eq!(
        t.texts(
            "SELECT i.indisvalid::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = 'idx_users_stripe_customer'"
        )
        .await,
        vec!["true"],
        "users keeps its unique index"
    );
    let status = String::from_utf8_lossy(&migration(&["status"], Some(&t.url)).stdout).into_owned();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("m006_billing_fields") && l.contains("Applied")),
        "{status}"
    );
}

/// A statement the server rejects is shown in the server's words, without the line of
/// PostgreSQL's own C source that raised it ("... at line 1392" before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_statement_shows_no_server_source_line_postgres() {
    let t = TestDb::new(Backend::Postgres).await;
    // A view where m001 creates its table: its CREATE TABLE is rejected.
    t.exec("CREATE VIEW users AS SELECT 1 AS id").await;
    let out = migration(&["up"], Some(&t.url));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert!(!err.contains(" at line "), "{err}");
}

/// A MariaDB database created as `utf8mb3` or `latin1` is refused by `up` in one line,
/// before anything is applied. Before: `utf8mb3` migrated (and an emoji answered 500 later),
/// `latin1` failed at m009 with m001-m008 applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_store_utf8mb4_is_refused_mysql() {
    use sea_orm::ConnectionTrait;
    for charset in ["utf8mb3", "latin1"] {
        let t = TestDb::new(Backend::MySql).await;
        t.db.execute_unprepared(&format!(
            "ALTER DATABASE {} CHARACTER SET {charset}",
            t.name
        ))
        .await
        .expect("set the database's character set");
        let out = migration(&["up"], Some(&t.url));
        assert_clear_error(&out, &format!("uses character set {charset}"));
        assert_eq!(
            t.texts(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() \
                 AND table_name IN ('users', 'seaql_migrations')"
            )
            .await,
            vec!["0"],
            "{charset}: nothing may be applied"
        );
    }
}

/// `ALTER DATABASE ... CHARACTER SET utf8mb4` leaves the tables already there as they were:
/// such a database passed the check above while its old `utf8mb3` columns still failed on
/// an emoji. `up` now names them and applies nothing; converted as docs/migrator.md says, it
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tables_that_are_not_utf8mb4_are_refused_mysql() {
    let t = TestDb::new(Backend::MySql).await;
    let out = migration(&["up", "-n", "3"], Some(&t.url));
    assert!(out.status.success(), "{}", stderr(&out));
    t.exec("ALTER TABLE api_tokens CONVERT TO CHARACTER SET utf8mb3 COLLATE utf8mb3_unicode_ci")
        .await;
    let out = migration(&["up"], Some(&t.url));
    assert_clear_error(&out, "api_tokens.token_hash (utf8mb3_unicode_ci)");
    assert!(!stderr(&out).contains("users."), "{}", stderr(&out));
    let applied = "SELECT count(*) FROM seaql_migrations";
    assert_eq!(t.texts(applied).await, vec!["3"], "nothing may be applied");
    // The conversion docs/migrator.md gives for a table without binary columns.
    t.exec("ALTER TABLE api_tokens CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        .await;
    let out = migration(&["up"], Some(&t.url));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Issue 17 §6: every table names `utf8mb4`, and every connection speaks it. The database
/// here defaults to `utf8mb4_general_ci`: the tables of m001-m003 show the collation they
/// name, not the database's (before, they took the database's). A URL asking for `latin1`
/// still gets `utf8mb4`, and an emoji round-trips. A database that applied m001-m003 before
/// they named their character set is not flagged as changed (EARLIER_CHECKSUMS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_and_connection_names_utf8mb4_mysql() {
    use sea_orm::{ConnectionTrait, Statement};
    let t = TestDb::new(Backend::MySql).await;
    t.exec(&format!(
        "ALTER DATABASE {} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
        t.name
    ))
    .await;
    let out = migration(&["up"], Some(&t.url));
    assert!(out.status.success(), "{}", stderr(&out));
    let tables = t
        .texts(
            "SELECT concat(table_name, ' ', table_collation) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' \
             AND table_name <> 'seaql_migrations' ORDER BY table_name",
        )
        .await;
    assert!(!tables.is_empty());
    for line in &tables {
        assert!(
            line.ends_with(" utf8mb4_unicode_ci") || line.ends_with(" utf8mb4_bin"),
            "a table took the database's default: {tables:?}"
        );
    }
    let row =
        t.db.query_one_raw(Statement::from_string(
            sea_orm::DbBackend::MySql,
            "SHOW CREATE TABLE users",
        ))
        .await
        .expect("show create table")
        .expect("a row");
    let ddl: String = row.try_get_by_index(1).expect("the DDL");
    assert!(
        ddl.contains("CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"),
        "{ddl}"
    );

    let url = migration::connect::resolve_url(Some(&format!("{}?charset=latin1", t.url)))
        .expect("a good URL");
    let db = migration::connect::open(&url, None, std::time::Duration::from_secs(5), 1)
        .await
        .expect("open");
    let text = async |sql: &str| -> String {
        db.query_one_raw(Statement::from_string(sea_orm::DbBackend::MySql, sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .and_then(|row| row.try_get_by_index::<String>(0).ok())
            .unwrap_or_default()
    };
    assert_eq!(text("SELECT @@character_set_client").await, "utf8mb4");
    db.execute_unprepared("INSERT INTO users (email) VALUES ('\u{1F600}@example.com')")
        .await
        .expect("an emoji is stored");
    assert_eq!(
        text("SELECT email FROM users").await,
        "\u{1F600}@example.com"
    );
    let _ = db.close().await;

    t.exec(
        "UPDATE migration_checksums SET checksum = \
         '039c2dda3b071640ebd2b0de9477ed1150bf3bcad5a2d0fc991d5b8c4d11fb6a' \
         WHERE version = 'm001_create_users'",
    )
    .await;
    let status = migration(&["status"], Some(&t.url));
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(!String::from_utf8_lossy(&status.stdout).contains("CHANGED"));
    assert!(migration(&["up"], Some(&t.url)).status.success());
    assert_ne!(
        t.texts("SELECT checksum FROM migration_checksums WHERE version = 'm001_create_users'")
            .await,
        ["039c2dda3b071640ebd2b0de9477ed1150bf3bcad5a2d0fc991d5b8c4d11fb6a"],
        "up records the current plan's sum"
    );
}
