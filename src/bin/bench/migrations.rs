//! `bench migrations`: [`crate::live_migrations`] at production size (1M users, 5M sessions
//! by default), one Markdown row per migration, backend and direction, for
//! docs/benchmarks.md. CI runs the same code small (`tests/live_migrations.rs`).

use std::time::Duration;

use sea_orm::DbBackend;

use crate::live_migrations::{self, Row, Size};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// PostgreSQL server URL, without a database name; `none` skips PostgreSQL.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres: String,
    /// MariaDB server URL, without a database name; `none` skips MariaDB.
    #[arg(
        long,
        env = "BENCH_MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    pub mysql: String,
    #[arg(long, default_value_t = 1_000_000)]
    pub users: i64,
    #[arg(long, default_value_t = 5_000_000)]
    pub sessions: i64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Seconds of clients before the migration: the floor.
    #[arg(long, default_value_t = 10)]
    pub floor: u64,
    /// Seconds of clients alone after the floor and before each migration, reported as the
    /// `none (control)` row: how long clients wait with no migration over a window as long
    /// as a long migration's. 0 for none.
    #[arg(long, default_value_t = 60)]
    pub control: u64,
    /// Only the migration of this name (e.g. m010_subscriptions).
    #[arg(long)]
    pub only: Option<String>,
}

pub async fn run(args: Args) -> Result<(), String> {
    let size = Size {
        users: args.users,
        sessions: args.sessions,
        clients: args.clients,
        floor: Duration::from_secs(args.floor),
        control: Duration::from_secs(args.control),
    };
    let servers = [
        (DbBackend::Postgres, &args.postgres),
        (DbBackend::MySql, &args.mysql),
    ];
    println!("{}", Row::HEADER);
    let (mut broken, mut slow) = (0, 0);
    for (index, name) in live_migrations::migration_names().iter().enumerate() {
        if args.only.as_ref().is_some_and(|only| only != name) {
            continue;
        }
        for (backend, url) in servers {
            if url.as_str() == "none" {
                continue;
            }
            for row in live_migrations::run_one(url, backend, index, size).await? {
                println!("{}", row.markdown());
                if row.is_control() {
                    continue;
                }
                if !row.completed_without_failures() {
                    broken += 1;
                } else if !row.acceptable() {
                    slow += 1;
                }
            }
        }
    }
    if broken + slow > 0 {
        return Err(format!(
            "{broken} row(s) with failed statements or migrations, {slow} row(s) that waited \
             longer than the bar"
        ));
    }
    Ok(())
}
