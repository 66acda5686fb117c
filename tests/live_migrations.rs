//! Every migration in `Migrator::migrations()`, on PostgreSQL and MariaDB, under clients
//! issuing the API's requests: up, down and up again, each completing with no client
//! statement failing. The waits are measured and printed, not asserted: on a shared CI
//! machine they are noise-bound (house rule: speed targets live in benchmarks), and `bench
//! migrations` enforces the wait bar, running the same code at 1M users / 5M sessions.
//! Small here: 2,000 users, 10,000 sessions, 4 clients, a 1 s floor and a 1 s control
//! window.

// Shared with `bench migrations`, which uses the parts this test does not (the wait bar).
#[allow(dead_code)]
#[path = "../src/bin/bench/live_migrations.rs"]
mod live_migrations;
mod support;

use std::time::Duration;

use live_migrations::{Row, Size};
use sea_orm::DbBackend;

const SIZE: Size = Size {
    users: 2_000,
    sessions: 10_000,
    clients: 4,
    floor: Duration::from_secs(1),
    control: Duration::from_secs(1),
};

async fn every_migration(backend: support::Backend, db_backend: DbBackend) {
    let url = support::server_url(backend);
    let mut rows: Vec<Row> = Vec::new();
    for index in 0..live_migrations::migration_names().len() {
        rows.extend(
            live_migrations::run_one(&url, db_backend, index, SIZE)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let table: Vec<String> = rows.iter().map(Row::markdown).collect();
    println!("{}\n{}", Row::HEADER, table.join("\n"));
    let missed: Vec<&String> = rows
        .iter()
        .zip(&table)
        .filter(|(row, _)| !row.completed_without_failures())
        .map(|(_, line)| line)
        .collect();
    assert!(
        missed.is_empty(),
        "failed statements or migrations:\n{missed:#?}"
    );
    let migrations = live_migrations::migration_names().len();
    assert_eq!(
        rows.iter().filter(|row| !row.is_control()).count(),
        3 * migrations,
        "a row per migration and direction"
    );
    // A control row for every migration with clients to run: all but m001, which runs
    // before any table exists.
    assert_eq!(
        rows.iter().filter(|row| row.is_control()).count(),
        migrations - 1,
        "a control row per migration run under clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_migration_is_live_safe_on_postgres() {
    every_migration(support::Backend::Postgres, DbBackend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_migration_is_live_safe_on_mariadb() {
    every_migration(support::Backend::MySql, DbBackend::MySql).await
}

/// A migration that declares it cannot meet the bar on a backend is named, with that
/// backend, in docs/migrations.md.
#[test]
fn every_declared_exception_is_documented() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/migrations.md"))
        .expect("docs/migrations.md");
    for plan in migration::Migrator::planned() {
        for exemption in plan.not_live_safe() {
            let row = format!(
                "| {} | {} |",
                plan.name(),
                live_migrations::backend_name(exemption.backend)
            );
            assert!(
                docs.lines().any(|line| line.starts_with(&row)),
                "docs/migrations.md has no row starting {row:?}"
            );
        }
    }
}
