//! What every benchmark shares: a fresh PostgreSQL database, bulk population with progress,
//! concurrent writers and readers, and latency percentiles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// PostgreSQL server URL, without a database name.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub server: String,
    /// Database to (re)create for the run; dropped at the end.
    #[arg(long, default_value = "bench_billing")]
    pub database: String,
    #[arg(long, default_value_t = 1_000_000)]
    pub users: i64,
    #[arg(long, default_value_t = 5_000_000)]
    pub sessions: i64,
    /// Concurrent writers (UPDATE a user, then INSERT a session for them; autocommit).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Concurrent readers (SELECT a user, count their sessions).
    #[arg(long, default_value_t = 2)]
    pub readers: usize,
    /// Seconds of traffic in the no-work window (the noise floor).
    #[arg(long, default_value_t = 10)]
    pub noise_window: u64,
}

pub async fn connect(url: &str, max: u32) -> Result<DatabaseConnection, String> {
    connect_with(url, max, true).await
}

/// `ping`: check each connection with a round trip as it leaves the pool, as the API's pool
/// does (SeaORM's default); a floor turns it off to run nothing but its statements.
pub async fn connect_with(url: &str, max: u32, ping: bool) -> Result<DatabaseConnection, String> {
    let mut options = ConnectOptions::new(url.to_owned());
    // Every connection opened up front: opening one mid-window would read as latency.
    options
        .max_connections(max)
        .min_connections(max)
        .connect_timeout(Duration::from_secs(10))
        .test_before_acquire(ping)
        .sqlx_logging(false);
    migration::connect::without_pool_reaper(&mut options);
    Database::connect(options)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", migration::connect::redact(url)))
}

/// A fresh database: returns its URL and a connection sized for the traffic.
pub struct Bench {
    pub url: String,
    pub db: DatabaseConnection,
    admin: DatabaseConnection,
    name: String,
}

impl Bench {
    pub async fn create(common: &Common) -> Result<Self, String> {
        let server = common.server.trim_end_matches('/');
        let name = common.database.clone();
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("--database {name:?}: letters, digits and _ only"));
        }
        let admin = connect(&format!("{server}/postgres"), 1).await?;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .execute_unprepared(&sql)
                .await
                .map_err(|e| e.to_string())?;
        }
        let url = format!("{server}/{name}");
        let db = connect(&url, (common.writers + common.readers + 2) as u32).await?;
        Ok(Self {
            url,
            db,
            admin,
            name,
        })
    }

    pub async fn drop_database(self) {
        let _ = self.db.close().await;
        let _ = self
            .admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// What to put in the rows beyond the m005 columns.
#[derive(Clone, Copy, Default)]
pub struct Fill {
    /// `users.stripe_customer_id = 'cus_<id>'` (needs m006).
    pub customer_ids: bool,
    /// This many sessions soft-deleted ten days ago (needs m006).
    pub deleted_sessions: Option<i64>,
    /// Every user on Pro until next year, so no session limit applies (needs m006).
    pub pro: bool,
    /// Payloads as the API stores them (JSON), for benchmarks that read them back.
    pub json_payload: bool,
}

pub async fn populate(
    db: &DatabaseConnection,
    users: i64,
    sessions: i64,
    fill: Fill,
) -> Result<(), String> {
    let started = Instant::now();
    let mut customer = String::new();
    let mut customer_value = String::new();
    if fill.customer_ids {
        customer.push_str(", stripe_customer_id");
        customer_value.push_str(", 'cus_' || g");
    }
    if fill.pro {
        customer.push_str(", subscription_status, current_period_end");
        customer_value.push_str(", 'active', now() + interval '1 year'");
    }
    let payload = if fill.json_payload {
        "'{\"note\": \"' || repeat('x', 200) || '\"}'"
    } else {
        "repeat('x', 200)"
    };
    let (deleted, deleted_value) = match fill.deleted_sessions {
        Some(n) => (
            ", deleted_at",
            format!(", CASE WHEN g <= {n} THEN now() - interval '10 days' END"),
        ),
        None => ("", String::new()),
    };
    let users_sql = |from: i64, upto: i64| {
        format!(
            "INSERT INTO users (email, display_name{customer}) \
             SELECT 'u' || g || '@bench.test', 'User ' || g{customer_value} \
             FROM generate_series({from}, {upto}) g"
        )
    };
    let sessions_sql = |from: i64, upto: i64| {
        format!(
            "INSERT INTO synced_sessions (user_id, client_id, device_name, payload{deleted}) \
             SELECT 1 + (g % {users}), 'c' || g, 'device', {payload}{deleted_value} \
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
    // Flush the bulk load now, so its checkpoint does not land in a measured window.
    execute_all(db, &["VACUUM ANALYZE", "CHECKPOINT"]).await
}

/// The token benchmarks give user `id`: `bst_` and the id in 64 hex digits, the form the API
/// issues, so its format check lets it through to the lookup.
pub fn user_token(id: i64) -> String {
    format!("bst_{id:064x}")
}

/// Stores [`user_token`] of every user as the API stores tokens (SHA-256, hex).
pub const INSERT_USER_TOKENS: &str = "INSERT INTO api_tokens (user_id, token_hash) \
     SELECT id, encode(sha256(('bst_' || lpad(to_hex(id), 64, '0'))::bytea), 'hex') FROM users";

/// Runs `statements` one after another, stopping at the first that fails.
pub async fn execute_all(db: &DatabaseConnection, statements: &[&str]) -> Result<(), String> {
    for sql in statements {
        db.execute_unprepared(sql)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Seconds since the benchmark's first measurement: the time axis every chart shares.
pub fn now() -> f64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// One operation: when it started ([`now`]) and how long it took.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: f64,
    pub latency: Duration,
}

pub fn latencies(samples: &[Sample]) -> Vec<Duration> {
    samples.iter().map(|s| s.latency).collect()
}

pub struct Window {
    pub outcome: Result<(), String>,
    pub wall: Duration,
    /// When the work started and ended ([`now`]).
    pub started: f64,
    pub ended: f64,
    pub writers: Vec<Sample>,
    pub readers: Vec<Sample>,
}

impl Window {
    /// The operations that overlapped the work (not those of the margins around it).
    pub fn during(&self, samples: &[Sample]) -> Vec<Sample> {
        samples
            .iter()
            .filter(|s| s.at <= self.ended && s.at + s.latency.as_secs_f64() >= self.started)
            .copied()
            .collect()
    }

    /// The longest single operation that overlapped the work, writers and readers together.
    pub fn worst(&self) -> Duration {
        self.during(&self.writers)
            .iter()
            .chain(&self.during(&self.readers))
            .map(|s| s.latency)
            .max()
            .unwrap_or_default()
    }

    /// How far the worst operation exceeded the floor's p99 (zero when it did not).
    pub fn worst_above(&self, floor: &Window) -> Duration {
        let all: Vec<Duration> = floor
            .writers
            .iter()
            .chain(&floor.readers)
            .map(|s| s.latency)
            .collect();
        self.worst().saturating_sub(quantile(&all, 0.99))
    }
}

/// Runs traffic for `margin`, then `work` under traffic, then `margin` more. Keeps every
/// operation, the margins' too (the charts show them); [`Window::during`] picks those that
/// overlapped the work, which is what the figures are about.
pub async fn measure(
    db: &DatabaseConnection,
    common: &Common,
    margin: Duration,
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Window {
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |i: usize, write: bool| {
        tokio::spawn(traffic(
            db.clone(),
            stop.clone(),
            common.users,
            i as i64,
            write,
        ))
    };
    let writers: Vec<_> = (0..common.writers).map(|i| spawn(i, true)).collect();
    let readers: Vec<_> = (0..common.readers).map(|i| spawn(i, false)).collect();
    tokio::time::sleep(margin).await;
    let started_at = now();
    let started = Instant::now();
    // Bounded: the benchmark stops by itself even if the work hangs.
    let outcome = match tokio::time::timeout(Duration::from_secs(900), work).await {
        Ok(result) => result,
        Err(_) => Err("timed out after 900 s".to_owned()),
    };
    let wall = started.elapsed();
    let ended = now();
    tokio::time::sleep(margin).await;
    stop.store(true, Ordering::Relaxed);
    let mut window = Window {
        outcome,
        wall,
        started: started_at,
        ended,
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

/// One client: writers update a user, then add a session for them; readers fetch a
/// user and count their sessions. Returns each operation (errors count too).
async fn traffic(
    db: DatabaseConnection,
    stop: Arc<AtomicBool>,
    users: i64,
    seed: i64,
    write: bool,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut id = 1 + (seed * 7919) % users;
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        id = 1 + (id * 48271 + 11) % users;
        n += 1;
        let at = now();
        let started = Instant::now();
        let _ = if write {
            // Two autocommit statements, as pgbench runs a script: the INSERT holds
            // synced_sessions while its foreign-key check waits on users, which is what makes
            // a migration that locks both tables deadlock.
            async {
                db.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "UPDATE users SET display_name = $1 WHERE id = $2",
                    [format!("w{seed}-{n}").into(), id.into()],
                ))
                .await?;
                db.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) \
                     VALUES ($1, $2, 'bench', 'p')",
                    [id.into(), format!("bench-{seed}-{n}").into()],
                ))
                .await
                .map(|_| ())
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
        samples.push(Sample {
            at,
            latency: started.elapsed(),
        });
    }
    samples
}

/// The `q` quantile (0..=1) of `samples`; zero when there are none.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)) as usize]
}

/// `p50/p99/max` in milliseconds.
pub fn percentiles(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "-".to_owned();
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    format!("{:.1}/{:.1}/{:.1}", at(0.5), at(0.99), at(1.0))
}

/// A warm-up (discarded), then the table header and the no-work window: the noise floor.
pub async fn noise_floor(
    db: &DatabaseConnection,
    common: &Common,
    margin: Duration,
    name: &str,
) -> Window {
    let _ = measure(db, common, margin, async { Ok(()) }).await;
    header();
    let floor = measure(db, common, margin, async {
        tokio::time::sleep(Duration::from_secs(common.noise_window)).await;
        Ok(())
    })
    .await;
    report(name, &floor);
    floor
}

fn header() {
    println!(
        "\nwindow           outcome     wall     writers p50/p99/max ms      readers p50/p99/max ms"
    );
}

pub fn report(name: &str, window: &Window) {
    println!(
        "{name:<16} {:<11} {:>6.2}s  {:<27} {}",
        if window.outcome.is_ok() {
            "ok"
        } else {
            "FAILED"
        },
        window.wall.as_secs_f64(),
        percentiles(&latencies(&window.during(&window.writers))),
        percentiles(&latencies(&window.during(&window.readers))),
    );
    if let Err(e) = &window.outcome {
        println!("  error: {e}");
    }
}
