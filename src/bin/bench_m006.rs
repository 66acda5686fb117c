//! Benchmark: m006 on a PostgreSQL database under live traffic.
//!
//! Populates `users` and `synced_sessions`, then in one run measures three windows with the
//! same concurrent writers and readers: no migration (the noise floor), m006 through the real
//! migrator, and the unit card's SQL in one transaction (what a stock SeaORM migration does).
//! Prints the outcome, the wall time and p50/p99/max latency of writers and readers per window.
//!
//! `cargo run --release --bin bench_m006 -- --help`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
    TransactionTrait,
};

#[derive(Parser, Debug)]
#[command(about = "m006 on PostgreSQL under concurrent writers and readers")]
struct Args {
    /// PostgreSQL server URL, without a database name.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    server: String,
    /// Database to (re)create for the run.
    #[arg(long, default_value = "bench_m006")]
    database: String,
    #[arg(long, default_value_t = 1_000_000)]
    users: i64,
    #[arg(long, default_value_t = 5_000_000)]
    sessions: i64,
    #[arg(long, default_value_t = 4)]
    writers: usize,
    #[arg(long, default_value_t = 2)]
    readers: usize,
    /// Seconds of traffic in the no-migration window.
    #[arg(long, default_value_t = 10)]
    noise_window: u64,
    /// Seconds of traffic before and after each migration.
    #[arg(long, default_value_t = 1)]
    margin: u64,
}

const CARD_SQL: &str = "
ALTER TABLE users
  ADD COLUMN stripe_customer_id VARCHAR(255) UNIQUE,
  ADD COLUMN subscription_id VARCHAR(255),
  ADD COLUMN subscription_status VARCHAR(50) DEFAULT 'none',
  ADD COLUMN current_period_end TIMESTAMPTZ;
CREATE INDEX idx_users_stripe_customer ON users(stripe_customer_id);
ALTER TABLE synced_sessions ADD COLUMN deleted_at TIMESTAMPTZ;
CREATE INDEX idx_sessions_deleted_at ON synced_sessions(deleted_at) WHERE deleted_at IS NOT NULL;
ALTER TABLE users ADD CONSTRAINT chk_subscription_status
  CHECK (subscription_status IN ('none', 'trialing', 'active', 'past_due', 'canceled', 'unpaid'));
";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn connect(url: &str, max: u32) -> Result<DatabaseConnection, String> {
    let mut options = ConnectOptions::new(url.to_owned());
    // Every connection opened up front: opening one mid-window would read as latency.
    options
        .max_connections(max)
        .min_connections(max)
        .connect_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", migration::connect::redact(url)))
}

async fn run(args: Args) -> Result<(), String> {
    let server = args.server.trim_end_matches('/');
    let admin = connect(&format!("{server}/postgres"), 1).await?;
    let db_name = &args.database;
    if !db_name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "--database {db_name:?}: letters, digits and _ only"
        ));
    }
    for sql in [
        format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"),
        format!("CREATE DATABASE {db_name}"),
    ] {
        admin
            .execute_unprepared(&sql)
            .await
            .map_err(|e| e.to_string())?;
    }
    let url = format!("{server}/{db_name}");
    let db = connect(&url, (args.writers + args.readers + 2) as u32).await?;
    Migrator::up(&db, Some(5))
        .await
        .map_err(|e| e.to_string())?;
    populate(&db, args.users, args.sessions).await?;

    // Warm-up: caches and connections, discarded.
    let _ = measure(&db, &args, Duration::from_secs(1), async { Ok(()) }).await;
    println!(
        "\nwindow           outcome     wall     writers p50/p99/max ms      readers p50/p99/max ms"
    );
    let floor = measure(&db, &args, Duration::from_secs(args.noise_window), async {
        tokio::time::sleep(Duration::from_secs(args.noise_window)).await;
        Ok(())
    })
    .await;
    report("no migration", &floor);

    let migrate = connect(&url, 4).await?;
    let ours = measure(&db, &args, Duration::from_secs(args.margin), async {
        Migrator::up(&migrate, None)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    report("m006 migrator", &ours);
    Migrator::down(&migrate, Some(1))
        .await
        .map_err(|e| e.to_string())?;

    let card = measure(&db, &args, Duration::from_secs(args.margin), async {
        let txn = migrate.begin().await.map_err(|e| e.to_string())?;
        txn.execute_unprepared(CARD_SQL)
            .await
            .map_err(|e| e.to_string())?;
        txn.commit().await.map_err(|e| e.to_string())
    })
    .await;
    report("card SQL, 1 txn", &card);
    if let Err(e) = &card.outcome {
        println!("card SQL error: {e}");
    }
    let _ = admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .await;
    Ok(())
}

async fn populate(db: &DatabaseConnection, users: i64, sessions: i64) -> Result<(), String> {
    let started = Instant::now();
    let users_sql = |from: i64, upto: i64| {
        format!(
            "INSERT INTO users (email, display_name) SELECT 'u' || g || '@bench.test', 'User ' || g \
             FROM generate_series({from}, {upto}) g"
        )
    };
    let sessions_sql = |from: i64, upto: i64| {
        format!(
            "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) \
             SELECT 1 + (g % {users}), 'c' || g, 'device', repeat('x', 200) \
             FROM generate_series({from}, {upto}) g"
        )
    };
    for (table, total, batch, sql) in [
        (
            "users",
            users,
            100_000,
            &users_sql as &dyn Fn(i64, i64) -> String,
        ),
        ("sessions", sessions, 500_000, &sessions_sql),
    ] {
        let mut done = 0;
        while done < total {
            let upto = (done + batch).min(total);
            db.execute_unprepared(&sql(done + 1, upto))
                .await
                .map_err(|e| e.to_string())?;
            done = upto;
            eprintln!(
                "populating {table}: {done}/{total} ({:.0}s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    db.execute_unprepared("VACUUM ANALYZE")
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

struct Window {
    outcome: Result<(), String>,
    wall: Duration,
    writers: Vec<Duration>,
    readers: Vec<Duration>,
}

/// Runs traffic for `margin`, then `work` under traffic, then `margin` more.
async fn measure(
    db: &DatabaseConnection,
    args: &Args,
    margin: Duration,
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Window {
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for i in 0..args.writers {
        writers.push(tokio::spawn(traffic(
            db.clone(),
            stop.clone(),
            args.users,
            i as i64,
            true,
        )));
    }
    for i in 0..args.readers {
        readers.push(tokio::spawn(traffic(
            db.clone(),
            stop.clone(),
            args.users,
            i as i64,
            false,
        )));
    }
    tokio::time::sleep(margin).await;
    let started = Instant::now();
    // Bounded: the benchmark stops by itself even if the work hangs.
    let outcome = match tokio::time::timeout(Duration::from_secs(600), work).await {
        Ok(result) => result,
        Err(_) => Err("timed out after 600 s".to_owned()),
    };
    let wall = started.elapsed();
    tokio::time::sleep(margin).await;
    stop.store(true, Ordering::Relaxed);
    let mut window = Window {
        outcome,
        wall,
        writers: Vec::new(),
        readers: Vec::new(),
    };
    for handle in writers {
        window.writers.extend(handle.await.unwrap_or_default());
    }
    for handle in readers {
        window.readers.extend(handle.await.unwrap_or_default());
    }
    window
}

/// One client: writers update a user and add a session in one transaction; readers fetch a
/// user and count their sessions. Returns each operation's latency (errors count too).
async fn traffic(
    db: DatabaseConnection,
    stop: Arc<AtomicBool>,
    users: i64,
    seed: i64,
    write: bool,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut id = 1 + (seed * 7919) % users;
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        id = 1 + (id * 48271 + 11) % users;
        n += 1;
        let started = Instant::now();
        let _ = if write {
            async {
                let txn = db.begin().await?;
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "UPDATE users SET display_name = $1 WHERE id = $2",
                    [format!("w{seed}-{n}").into(), id.into()],
                ))
                .await?;
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) \
                     VALUES ($1, $2, 'bench', 'p')",
                    [id.into(), format!("bench-{seed}-{n}").into()],
                ))
                .await?;
                txn.commit().await
            }
            .await
        } else {
            async {
                db.query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT id, email FROM users WHERE id = $1",
                    [id.into()],
                ))
                .await?;
                db.query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT count(*) FROM synced_sessions WHERE user_id = $1",
                    [id.into()],
                ))
                .await
                .map(|_| ())
            }
            .await
        };
        latencies.push(started.elapsed());
    }
    latencies
}

fn percentiles(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "-".to_owned();
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    format!("{:.1}/{:.1}/{:.1}", at(0.5), at(0.99), at(1.0))
}

fn report(name: &str, window: &Window) {
    let mut writers = window.writers.clone();
    let mut readers = window.readers.clone();
    println!(
        "{name:<16} {:<11} {:>6.2}s  {:<27} {}",
        if window.outcome.is_ok() {
            "ok"
        } else {
            "FAILED"
        },
        window.wall.as_secs_f64(),
        percentiles(&mut writers),
        percentiles(&mut readers),
    );
}
