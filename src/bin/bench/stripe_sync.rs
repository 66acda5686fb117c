//! `bench stripe-sync`: `billing stripe-sync` against a fake Stripe of `--customers` customers
//! and as many subscriptions, held to `--rate` requests a second with 429s
//! (`fake_stripe`). Two runs per size: the first links every customer (by Checkout Session,
//! `metadata.user_id` and e-mail) and applies every subscription; the repeat finds everything
//! linked and applied, and reads no Checkout Session.
//!
//! The floor is the rate limit's: the requests the run made, answered, divided by the rate,
//! counted by the fake in the same run. A run within 1.25× of it is the goal (issue 21). Peak
//! RSS is the `billing stripe-sync` process's (`VmHWM`, the kernel's high-water mark, read
//! every 100 ms while it runs), not the bench's, which also serves the fake.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::about::About;
use crate::chart::{self, Curve};
use crate::cpu::{self, Cpu};
use crate::fake_stripe;
use crate::load::{self, Bench, Common, Fill};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// PostgreSQL server URL, without a database name.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub server: String,
    /// Database to (re)create for each size; dropped at the end.
    #[arg(long, default_value = "bench_stripe_sync")]
    pub database: String,
    /// Sizes, comma-separated: customers at Stripe, each with a user and a subscription.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub customers: Vec<u64>,
    /// Requests a second the fake allows, and stripe-sync is set to
    /// (STRIPE_MAX_REQUESTS_PER_SEC).
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// stripe-sync's STRIPE_SYNC_WRITERS.
    #[arg(long, default_value_t = 8)]
    pub writers: u32,
    /// stripe-sync's DB_MAX_CONNECTIONS.
    #[arg(long, default_value_t = 10)]
    pub db_max_connections: u32,
    /// The `billing` binary to run (default: the one beside this one).
    #[arg(long)]
    pub billing_bin: Option<PathBuf>,
    /// Where to write the chart of time against customers.
    #[arg(long, default_value = "bench-stripe-sync.svg")]
    pub chart: PathBuf,
}

/// One run of `billing stripe-sync`.
struct Measured {
    answered: u64,
    refused: u64,
    wall: Duration,
    peak_rss_mb: f64,
    cpu_seconds: f64,
    machine_busy: f64,
    summary: String,
}

impl Measured {
    fn floor(&self, rate: u32) -> f64 {
        self.answered as f64 / f64::from(rate.max(1))
    }
}

pub async fn run(args: Args) -> Result<(), String> {
    let common = Common {
        server: args.server.clone(),
        database: args.database.clone(),
        users: 0,
        sessions: 0,
        writers: 0,
        readers: 0,
        noise_window: 0,
    };
    let mut about = None;
    let mut points: Vec<(u64, Measured, Measured)> = Vec::new();
    for &customers in &args.customers {
        let bench = Bench::create(&common).await?;
        if about.is_none() {
            let read = About::read(&bench.db).await;
            read.print();
            println!(
                "# rate {} requests/s, {} writers, DB_MAX_CONNECTIONS {}; peak RSS: the \
                 billing stripe-sync process's VmHWM",
                args.rate, args.writers, args.db_max_connections
            );
            println!(
                "\n{:>9} {:<7} {:>8} {:>5} {:>8} {:>8} {:>6} {:>8} {:>7} {:>7}",
                "customers",
                "run",
                "requests",
                "429s",
                "wall s",
                "floor s",
                "ratio",
                "peak RSS",
                "its CPU",
                "machine"
            );
            about = Some(read);
        }
        let measured = size(&args, &bench, customers).await;
        bench.drop_database().await;
        let (first, repeat) = measured?;
        points.push((customers, first, repeat));
        // After every size: a run stopped during a long size still leaves the chart of the
        // sizes before it.
        if let Some(about) = &about {
            draw(&args, about, &points)?;
        }
    }
    Ok(())
}

async fn size(args: &Args, bench: &Bench, customers: u64) -> Result<(Measured, Measured), String> {
    Migrator::up(&bench.db, None)
        .await
        .map_err(|e| e.to_string())?;
    let users = i64::try_from(customers).map_err(|_| "--customers: too many".to_owned())?;
    load::populate(&bench.db, users, 0, Fill::default()).await?;
    load::execute_all(&bench.db, &["VACUUM ANALYZE users"]).await?;
    let first = once(args, bench, customers, true).await?;
    report(customers, "first", &first, args.rate);
    let linked = count(
        &bench.db,
        "SELECT count(*) FROM users WHERE subscription_status = 'active' \
         AND stripe_customer_id IS NOT NULL",
    )
    .await?;
    if linked != users {
        return Err(format!(
            "after the first run {linked} of {users} users are linked and active"
        ));
    }
    load::execute_all(&bench.db, &["VACUUM ANALYZE"]).await?;
    let repeat = once(args, bench, customers, false).await?;
    report(customers, "repeat", &repeat, args.rate);
    Ok((first, repeat))
}

async fn count(db: &DatabaseConnection, sql: &str) -> Result<i64, String> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            sql,
        ))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    row.try_get_by_index::<i64>(0).map_err(|e| e.to_string())
}

fn report(customers: u64, run: &str, m: &Measured, rate: u32) {
    let floor = m.floor(rate);
    println!(
        "{customers:>9} {run:<7} {:>8} {:>5} {:>8.1} {:>8.1} {:>5.2}x {:>5.0} MB {:>6.0}s {:>6.0}%",
        m.answered,
        m.refused,
        m.wall.as_secs_f64(),
        floor,
        m.wall.as_secs_f64() / floor,
        m.peak_rss_mb,
        m.cpu_seconds,
        m.machine_busy * 100.0
    );
    println!("          {}", m.summary);
}

/// Runs `billing stripe-sync --link-by-email` once against a fresh fake.
async fn once(args: &Args, bench: &Bench, customers: u64, first: bool) -> Result<Measured, String> {
    let (base, served, stop) = fake_stripe::start(customers, args.rate).await?;
    let binary = match &args.billing_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("this binary's path: {e}"))?
            .with_file_name("billing"),
    };
    let log_path = std::env::temp_dir().join(format!(
        "bench-stripe-sync-{customers}-{}.log",
        if first { "first" } else { "repeat" }
    ));
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let cpu = Cpu::read();
    let started = Instant::now();
    let mut child = Command::new(&binary)
        .args(["stripe-sync", "--link-by-email"])
        .env_clear()
        .env("DATABASE_URL", &bench.url)
        .env("STRIPE_API_KEY", "sk_test_bench")
        .env("STRIPE_API_BASE", &base)
        .env("STRIPE_MODE", "test")
        .env("STRIPE_MAX_REQUESTS_PER_SEC", args.rate.to_string())
        .env("STRIPE_SYNC_WRITERS", args.writers.to_string())
        .env("DB_MAX_CONNECTIONS", args.db_max_connections.to_string())
        .env("PRO_PRICE_IDS", fake_stripe::PRO_PRICE)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let pid = child.id();
    let mut peak_kb = 0u64;
    let mut jiffies = 0u64;
    let status = loop {
        peak_kb = peak_kb.max(vm_hwm_kb(pid).unwrap_or(0));
        jiffies = cpu::process_jiffies(pid).unwrap_or(jiffies);
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(err) => return Err(format!("waiting for stripe-sync: {err}")),
        }
    };
    let wall = started.elapsed();
    let used = cpu.since();
    let _ = stop.send(());
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
    }
    if !status.success() {
        return Err(format!(
            "stripe-sync failed ({status}); its log: {}",
            log_path.display()
        ));
    }
    Ok(Measured {
        answered: served.answered.load(Ordering::Relaxed),
        refused: served.refused.load(Ordering::Relaxed),
        wall,
        peak_rss_mb: peak_kb as f64 / 1024.0,
        cpu_seconds: jiffies as f64 / cpu::TICKS_PER_SECOND,
        machine_busy: used.machine_busy,
        summary: stdout.trim().to_owned(),
    })
}

/// The process's peak resident set (`VmHWM` in /proc/<pid>/status), in KiB.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn draw(args: &Args, about: &About, points: &[(u64, Measured, Measured)]) -> Result<(), String> {
    let curve = |name, color, f: &dyn Fn(&Measured) -> f64, first: bool| Curve {
        name,
        color,
        points: points
            .iter()
            .map(|(n, a, b)| (*n as f64, f(if first { a } else { b })))
            .collect(),
    };
    let wall = |m: &Measured| m.wall.as_secs_f64();
    let floor = |m: &Measured| m.floor(args.rate);
    let curves = [
        curve("first run", chart::INK_RED, &wall, true),
        curve("repeat run", chart::INK_BLUE, &wall, false),
        curve(
            "first run's floor (requests / rate)",
            chart::INK_GREY,
            &floor,
            true,
        ),
        curve("repeat run's floor", chart::INK_GREEN, &floor, false),
    ];
    chart::against(
        &args.chart,
        &format!("billing stripe-sync at {} requests/s", args.rate),
        &about.lines(),
        &curves,
        "customers at Stripe, millions (one subscription each)",
    )?;
    println!("\nchart: {}", args.chart.display());
    Ok(())
}
