//! m006 under live traffic, beside its floors, with the same writers and readers:
//!
//! 1. a no-migration window (the noise floor of latency);
//! 2. m006 through the real migrator, its steps read from the migrator's log;
//! 3. hand-written lock-aware SQL (`NOT VALID` + `VALIDATE`, `CONCURRENTLY`, `lock_timeout`)
//!    run by `psql`: the floor of wall time for the same schema change;
//! 4. the unit card's SQL in one transaction (what a stock SeaORM migration does).
//!
//! The report line gives m006's wall time ÷ the lock-aware SQL's, and how far the worst
//! operation of each window exceeded the floor's p99. `--scale` repeats 1–3 at several table
//! sizes and tabulates how wall time and waiting grow. `--runs N` measures 2 and 3 N times
//! per size, interleaved (m006, SQL, m006, SQL …, on the same populated tables), and reports
//! the median ratio, so one noisy window on a shared machine does not decide the verdict.

use std::path::PathBuf;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use plotters::style::RGBColor;
use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::about::About;
use crate::chart::{self, Curve, Mark, Series, Span};
use crate::load::{self, Bench, Common, Fill, Window};
use crate::migrator_log;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Seconds of traffic before and after each migration.
    #[arg(long, default_value_t = 1)]
    pub margin: u64,
    /// The lock-aware SQL's `lock_timeout`, in milliseconds (psql does not retry).
    #[arg(long, default_value_t = 1000)]
    pub sql_lock_timeout_ms: u64,
    /// Run at several sizes instead (users:sessions, comma-separated; the card's SQL is
    /// skipped). Each size is populated, measured and dropped before the next.
    #[arg(long, num_args = 0..=1, default_missing_value = "1000000:5000000,3000000:15000000,10000000:50000000")]
    pub scale: Option<String>,
    /// Interleaved runs of m006 and the lock-aware SQL per size; the verdict is their median
    /// ratio (default: 3 with --scale, 1 without).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Refuse a size when free disk would fall below this many GB (at about 340 bytes per
    /// session with its share of users and indexes).
    #[arg(long, default_value_t = 25)]
    pub min_free_gb: u64,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "bench-m006.svg")]
    pub chart: PathBuf,
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

/// What a DBA would type for the same change: every statement that takes ACCESS EXCLUSIVE is
/// metadata-only and gives up after `lock_timeout`; the scans run under weaker locks.
/// Autocommit, one statement at a time. `{timeout}` is replaced.
const LOCK_AWARE_SQL: &str = "
SET lock_timeout = '{timeout}ms';
ALTER TABLE users
  ADD COLUMN stripe_customer_id varchar(255),
  ADD COLUMN subscription_id varchar(255),
  ADD COLUMN subscription_status varchar(50) NOT NULL DEFAULT 'none',
  ADD COLUMN current_period_end timestamptz,
  ADD CONSTRAINT chk_subscription_status
    CHECK (subscription_status IN ('none', 'trialing', 'active', 'past_due', 'canceled', 'unpaid'))
    NOT VALID;
ALTER TABLE users VALIDATE CONSTRAINT chk_subscription_status;
CREATE UNIQUE INDEX CONCURRENTLY idx_users_stripe_customer ON users (stripe_customer_id);
ALTER TABLE synced_sessions ADD COLUMN deleted_at timestamptz;
CREATE INDEX CONCURRENTLY idx_sessions_deleted_at ON synced_sessions (deleted_at)
  WHERE deleted_at IS NOT NULL;
CREATE VIEW user_tiers AS SELECT id AS user_id, CASE
  WHEN subscription_status IN ('active', 'trialing')
   AND (current_period_end IS NULL OR current_period_end > now()) THEN 'pro'
  WHEN subscription_status = 'past_due' AND current_period_end IS NOT NULL
   AND current_period_end + interval '7 days' > now() THEN 'pro'
  ELSE 'free' END AS tier FROM users;
";

/// Undoes [`LOCK_AWARE_SQL`] (outside any measured window) so the card's SQL starts clean.
const UNDO_LOCK_AWARE_SQL: &str = "
DROP VIEW IF EXISTS user_tiers;
DROP INDEX IF EXISTS idx_sessions_deleted_at;
ALTER TABLE synced_sessions DROP COLUMN IF EXISTS deleted_at;
DROP INDEX IF EXISTS idx_users_stripe_customer;
ALTER TABLE users DROP CONSTRAINT IF EXISTS chk_subscription_status,
  DROP COLUMN IF EXISTS stripe_customer_id, DROP COLUMN IF EXISTS subscription_id,
  DROP COLUMN IF EXISTS subscription_status, DROP COLUMN IF EXISTS current_period_end;
";

/// The bound on m006's wall time ÷ the lock-aware SQL's, at every size.
const RATIO_BOUND: f64 = 1.2;

/// One size's result: the median run's windows, and every run's ratio and worst waits.
struct Measured {
    users: i64,
    sessions: i64,
    floor: Window,
    ours: Window,
    steps: Vec<migrator_log::Step>,
    sql: Window,
    card: Option<Window>,
    runs: Vec<Run>,
}

/// One interleaved pair: m006 then the lock-aware SQL.
struct Run {
    ratio: f64,
    ours_worst_above: Duration,
    sql_worst_above: Duration,
}

pub async fn run(args: Args) -> Result<(), String> {
    migrator_log::install();
    let Some(sizes) = &args.scale else {
        let measured = one_size(&args, &args.common, true).await?;
        let about = about(&args.common).await?;
        timeline(&args.chart, &about, &measured)?;
        println!("chart: {}", args.chart.display());
        return measured.ours.outcome.clone();
    };
    let mut rows = Vec::new();
    for size in sizes.split(',') {
        let (users, sessions) = size
            .split_once(':')
            .and_then(|(u, s)| Some((u.trim().parse().ok()?, s.trim().parse().ok()?)))
            .ok_or_else(|| format!("--scale: {size:?} is not users:sessions"))?;
        let common = Common {
            users,
            sessions,
            ..args.common.clone()
        };
        if let Err(refused) = check_disk(&common, sessions, args.min_free_gb).await {
            println!("\n{users} users / {sessions} sessions: not run: {refused}");
            break;
        }
        println!("\n== {users} users / {sessions} sessions ==");
        let measured = one_size(&args, &common, false).await?;
        let path = args
            .chart
            .with_file_name(format!("bench-m006-{}.svg", millions(sessions)));
        let about = about(&common).await?;
        timeline(&path, &about, &measured)?;
        println!("chart: {}", path.display());
        rows.push(measured);
    }
    let about = about(&args.common).await?;
    scale_table(&about, &rows);
    scale_chart(&args.chart, &about, &rows)?;
    println!("chart: {}", args.chart.display());
    Ok(())
}

async fn about(common: &Common) -> Result<About, String> {
    let server = common.server.trim_end_matches('/');
    let admin = load::connect(&format!("{server}/postgres"), 1).await?;
    let about = About::read(&admin).await;
    let _ = admin.close().await;
    Ok(about)
}

/// Refuses a size whose database would leave less than `min_free_gb` free on the server's disk.
async fn check_disk(common: &Common, sessions: i64, min_free_gb: u64) -> Result<(), String> {
    let server = common.server.trim_end_matches('/');
    let admin = load::connect(&format!("{server}/postgres"), 1).await?;
    let dir = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SHOW data_directory",
        ))
        .await
        .ok()
        .flatten()
        .and_then(|row| row.try_get_by_index::<String>(0).ok())
        .unwrap_or_else(|| "/".to_owned());
    let _ = admin.close().await;
    let output = std::process::Command::new("df")
        .args(["-Pk", &dir])
        .output()
        .map_err(|e| format!("cannot run df: {e}"))?;
    let free_kb: u64 = String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .ok_or("cannot read df's answer")?;
    let need_gb = sessions as f64 * 340.0 / 1e9;
    let free_gb = free_kb as f64 / 1e6;
    if free_gb - need_gb < min_free_gb as f64 {
        return Err(format!(
            "it needs about {need_gb:.0} GB and {free_gb:.0} GB are free on {dir}; \
             less than {min_free_gb} GB would be left"
        ));
    }
    Ok(())
}

async fn one_size(args: &Args, common: &Common, with_card: bool) -> Result<Measured, String> {
    let bench = Bench::create(common).await?;
    let db = &bench.db;
    let about = About::read(db).await;
    about.print();
    Migrator::up(db, Some(5)).await.map_err(|e| e.to_string())?;
    load::populate(db, common.users, common.sessions, Fill::default()).await?;
    let margin = Duration::from_secs(args.margin);

    let floor = load::noise_floor(db, common, margin, "no migration").await;

    let migrate = load::connect(&bench.url, 4).await?;
    let runs = args.runs.unwrap_or(if with_card { 1 } else { 3 }).max(1);
    let mut pairs = Vec::new();
    for run in 1..=runs {
        if runs > 1 {
            println!("\n-- run {run} of {runs} --");
        }
        let ours = load::measure(db, common, margin, async {
            Migrator::up(&migrate, Some(1))
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        load::report("m006 migrator", &ours);
        ours.outcome.clone()?;
        let steps =
            migrator_log::steps(&migrator_log::between(ours.started, ours.ended), ours.ended);
        Migrator::down(&migrate, Some(1))
            .await
            .map_err(|e| e.to_string())?;

        let script = LOCK_AWARE_SQL.replace("{timeout}", &args.sql_lock_timeout_ms.to_string());
        let sql = load::measure(db, common, margin, psql(bench.url.clone(), script)).await;
        load::report("lock-aware SQL", &sql);
        migrate
            .execute_unprepared(UNDO_LOCK_AWARE_SQL)
            .await
            .map_err(|e| e.to_string())?;
        sql.outcome.clone()?;
        pairs.push((ours, steps, sql));
    }
    let runs: Vec<Run> = pairs
        .iter()
        .map(|(ours, _, sql)| Run {
            ratio: ours.wall.as_secs_f64() / sql.wall.as_secs_f64().max(1e-9),
            ours_worst_above: ours.worst_above(&floor),
            sql_worst_above: sql.worst_above(&floor),
        })
        .collect();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| runs[a].ratio.total_cmp(&runs[b].ratio));
    let median = order[order.len() / 2];
    let (ours, steps, sql) = pairs.swap_remove(median);

    let card = if with_card {
        let card = load::measure(db, common, margin, async {
            let txn = migrate.begin().await.map_err(|e| e.to_string())?;
            txn.execute_unprepared(CARD_SQL)
                .await
                .map_err(|e| e.to_string())?;
            txn.commit().await.map_err(|e| e.to_string())
        })
        .await;
        load::report("card SQL, 1 txn", &card);
        Some(card)
    } else {
        None
    };
    let _ = migrate.close().await;
    bench.drop_database().await;

    let measured = Measured {
        users: common.users,
        sessions: common.sessions,
        floor,
        ours,
        steps,
        sql,
        card,
        runs,
    };
    print_ratios(&measured);
    Ok(measured)
}

/// Runs `script` through `psql` against `url`, stopping at the first error; the process's
/// start and connection count, as they would for a person running it.
async fn psql(url: String, script: String) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("cannot write to psql: {e}"))?;
        }
        let output = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    })
    .await
    .map_err(|e| format!("psql task: {e}"))?
}

/// `1500000` as `1.5M`.
fn millions(n: i64) -> String {
    format!("{}M", n as f64 / 1e6)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Measured {
    /// The median run's ratio (the one whose windows `ours` and `sql` hold).
    fn ratio(&self) -> f64 {
        self.ours.wall.as_secs_f64() / self.sql.wall.as_secs_f64().max(1e-9)
    }

    /// Every run's ratio, in run order.
    fn ratios(&self) -> String {
        let all: Vec<String> = self
            .runs
            .iter()
            .map(|r| format!("{:.2}", r.ratio))
            .collect();
        all.join(", ")
    }

    /// The longest wait above the floor's p99 in any run: (m006, lock-aware SQL).
    fn worst_waits(&self) -> (Duration, Duration) {
        let worst = |f: fn(&Run) -> Duration| self.runs.iter().map(f).max().unwrap_or_default();
        (worst(|r| r.ours_worst_above), worst(|r| r.sql_worst_above))
    }

    fn verdict(&self) -> &'static str {
        if self.ratio() <= RATIO_BOUND {
            "within"
        } else {
            "over"
        }
    }
}

fn print_ratios(m: &Measured) {
    if m.runs.len() > 1 {
        let (ours, sql) = m.worst_waits();
        println!(
            "\n{} runs: m006 ÷ lock-aware SQL = {} (median {:.2}: {} the {RATIO_BOUND}× bound); \
             worst wait above the floor's p99 in any run: m006 {:.1} ms, lock-aware SQL {:.1} ms. \
             The median run's figures:",
            m.runs.len(),
            m.ratios(),
            m.ratio(),
            m.verdict(),
            ms(ours),
            ms(sql),
        );
    }
    let (ours, sql) = (m.ours.wall.as_secs_f64(), m.sql.wall.as_secs_f64());
    println!(
        "\nm006 {:.2} s = {:.2} × the lock-aware SQL's {:.2} s; worst wait above the floor's p99 \
         ({:.1} ms): m006 {:.1} ms, lock-aware SQL {:.1} ms{}",
        ours,
        ours / sql.max(1e-9),
        sql,
        ms(load::quantile(
            &load::latencies(&[m.floor.writers.clone(), m.floor.readers.clone()].concat()),
            0.99
        )),
        ms(m.ours.worst_above(&m.floor)),
        ms(m.sql.worst_above(&m.floor)),
        m.card
            .as_ref()
            .map(|c| format!(", card SQL {:.1} ms", ms(c.worst_above(&m.floor))))
            .unwrap_or_default()
    );
    println!(
        "\nm006 step                                                        time   attempts  backoff"
    );
    let first = m.steps.first().map_or(m.ours.ended, |s| s.started);
    println!(
        "{:<62} {:>6.3}s",
        "before step 1 (connect, migration lock, schema, plan)",
        first - m.ours.started
    );
    for step in &m.steps {
        let name: String = step.name.chars().take(62).collect();
        println!(
            "{name:<62} {:>6.3}s  {:>8}  {:>5} ms",
            step.seconds, step.attempts, step.backoff_ms
        );
    }
}

fn timeline(path: &std::path::Path, about: &About, m: &Measured) -> Result<(), String> {
    let mut spans = vec![
        Span {
            label: "no migration (floor)",
            from: m.floor.started,
            to: m.floor.ended,
        },
        Span {
            label: "m006 migrator",
            from: m.ours.started,
            to: m.ours.ended,
        },
        Span {
            label: "lock-aware SQL (psql)",
            from: m.sql.started,
            to: m.sql.ended,
        },
    ];
    if let Some(card) = &m.card {
        spans.push(Span {
            label: "card SQL, 1 txn",
            from: card.started,
            to: card.ended,
        });
    }
    let marks: Vec<Mark> = m
        .steps
        .iter()
        .map(|s| Mark {
            label: s.name.split(':').next().unwrap_or_default().to_owned(),
            at: s.started,
        })
        .collect();
    let mut windows = vec![&m.floor, &m.ours, &m.sql];
    windows.extend(m.card.as_ref());
    let writers: Vec<_> = windows.iter().flat_map(|w| w.writers.clone()).collect();
    let readers: Vec<_> = windows.iter().flat_map(|w| w.readers.clone()).collect();
    chart::latency_timeline(
        path,
        &format!(
            "m006 under 4 writers + 2 readers, {} users / {} sessions: m006 {:.2} s = {:.2} × lock-aware SQL",
            millions(m.users),
            millions(m.sessions),
            m.ours.wall.as_secs_f64(),
            m.ours.wall.as_secs_f64() / m.sql.wall.as_secs_f64().max(1e-9)
        ),
        &about.lines(),
        &[
            Series {
                name: "writers",
                samples: &writers,
                color: chart::INK_RED,
            },
            Series {
                name: "readers",
                samples: &readers,
                color: chart::INK_BLUE,
            },
        ],
        &spans,
        &marks,
        0.1,
    )
}

fn scale_table(about: &About, rows: &[Measured]) {
    println!("\n## m006 --scale");
    about.print();
    println!(
        "\n| users / sessions | runs' ratios | median run: m006 wall | lock-aware SQL wall | ratio | ≤ {RATIO_BOUND}× | floor p99 / max | worst wait above floor p99, any run: m006 | lock-aware SQL |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for m in rows {
        let floor_p99 = load::quantile(
            &load::latencies(&[m.floor.writers.clone(), m.floor.readers.clone()].concat()),
            0.99,
        );
        let (ours_worst, sql_worst) = m.worst_waits();
        println!(
            "| {} / {} | {} | {:.2} s | {:.2} s | {:.2} | {} | {:.1} / {:.1} ms | {:.1} ms | {:.1} ms |",
            millions(m.users),
            millions(m.sessions),
            m.ratios(),
            m.ours.wall.as_secs_f64(),
            m.sql.wall.as_secs_f64(),
            m.ratio(),
            m.verdict(),
            ms(floor_p99),
            ms(m.floor.worst()),
            ms(ours_worst),
            ms(sql_worst),
        );
    }
    if let [first, .., last] = rows {
        // Least squares would overfit three points no better than the end points do.
        let per_million = (last.ours.wall.as_secs_f64() - first.ours.wall.as_secs_f64())
            / ((last.sessions - first.sessions) as f64 / 1e6);
        let at_100m =
            last.ours.wall.as_secs_f64() + per_million * (100e6 - last.sessions as f64) / 1e6;
        println!(
            "\nm006 grows by {per_million:.2} s per million sessions between the end points; \
             a straight line puts 100M sessions at about {at_100m:.0} s"
        );
    }
}

fn scale_chart(path: &std::path::Path, about: &About, rows: &[Measured]) -> Result<(), String> {
    let curve = |name, color, f: &dyn Fn(&Measured) -> f64| Curve {
        name,
        points: rows.iter().map(|m| (m.sessions as f64, f(m))).collect(),
        color,
    };
    chart::against_size(
        path,
        "m006 --scale: wall time grows with the table; does waiting?",
        &about.lines(),
        &[
            curve("m006 wall", chart::INK_RED, &|m| m.ours.wall.as_secs_f64()),
            curve("lock-aware SQL wall", chart::INK_GREEN, &|m| {
                m.sql.wall.as_secs_f64()
            }),
            curve("m006 worst wait above floor", RGBColor(240, 140, 0), &|m| {
                m.ours.worst_above(&m.floor).as_secs_f64()
            }),
            curve(
                "lock-aware SQL worst wait above floor",
                chart::INK_BLUE,
                &|m| m.sql.worst_above(&m.floor).as_secs_f64(),
            ),
        ],
    )
}
