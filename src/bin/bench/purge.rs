//! The retention purge under live traffic: 1M soft-deleted sessions among 5M (by default),
//! past the Free window, purged while writers and readers run. Reports rows per second and
//! the traffic's latency, beside a no-work window (the noise floor). m008, which reshapes the
//! index the purge reads, runs under the same traffic first, over the populated table.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use migration::{Migrator, MigratorTrait};

use crate::about::About;
use crate::chart::{self, Series, Span};
use crate::load::{self, Bench, Common, Fill, Sample};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Soft-deleted sessions (ten days ago, past the Free window) among --sessions.
    #[arg(long, default_value_t = 1_000_000)]
    pub deleted: i64,
    #[arg(long, default_value_t = 1000)]
    pub batch_size: u64,
    /// Milliseconds between batches (PURGE_PAUSE_MS).
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "bench-purge.svg")]
    pub chart: PathBuf,
}

pub async fn run(args: Args) -> Result<(), String> {
    let common = &args.common;
    let bench = Bench::create(common).await?;
    let db = &bench.db;
    crate::migrator_log::install();
    let about = About::read(db).await;
    about.print();
    // Up to m007: m008 is measured below, over the populated table.
    Migrator::up(db, Some(7)).await.map_err(|e| e.to_string())?;
    let fill = Fill {
        deleted_sessions: Some(args.deleted),
        ..Fill::default()
    };
    load::populate(db, common.users, common.sessions, fill).await?;
    let margin = Duration::from_secs(1);
    let floor = load::noise_floor(db, common, margin, "no work").await;

    let purger = load::connect(&bench.url, 2).await?;
    let m008 = load::measure(db, common, margin, async {
        Migrator::up(&purger, None).await.map_err(|e| e.to_string())
    })
    .await;
    load::report("m008 migrator", &m008);
    m008.outcome.clone()?;

    let limits = api::Limits {
        purge_batch_size: args.batch_size,
        purge_pause_ms: args.pause_ms,
        ..api::Limits::default()
    };
    let mut removed = 0;
    let mut batches: Vec<Sample> = Vec::new();
    let mut last = (load::now(), Instant::now());
    let started = Instant::now();
    let purge = load::measure(db, common, margin, async {
        // The first batch starts now, after the margin of traffic before the work.
        last = (load::now(), Instant::now());
        let purged = api::service::retention::purge_expired(&purger, &limits, |p| {
            // One sample per batch: when it started and how long it took (with its pause).
            batches.push(Sample {
                at: last.0,
                latency: last.1.elapsed(),
            });
            last = (load::now(), Instant::now());
            if p.batches % 100 == 0 {
                eprintln!(
                    "purged {} rows ({:.0}s)",
                    p.removed,
                    started.elapsed().as_secs_f64()
                );
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        removed = purged.removed;
        Ok(())
    })
    .await;
    load::report("purge", &purge);
    let floor_p99 = load::quantile(&load::latencies(&floor.writers), 0.99);
    let worst = purge
        .during(&purge.writers)
        .iter()
        .map(|s| s.latency)
        .max()
        .unwrap_or_default();
    let rate = removed as f64 / purge.wall.as_secs_f64().max(1e-9);
    println!(
        "\npurged {removed} rows in {:.1}s: {rate:.0} rows/s (batch {}, pause {} ms); worst writer \
         {:.1} ms = {:.1} ms above the floor's writer p99 ({:.1} ms)",
        purge.wall.as_secs_f64(),
        args.batch_size,
        args.pause_ms,
        worst.as_secs_f64() * 1e3,
        worst.saturating_sub(floor_p99).as_secs_f64() * 1e3,
        floor_p99.as_secs_f64() * 1e3,
    );
    let title = format!(
        "Purge of {}M soft-deleted among {}M sessions under 4 writers + 2 readers: {rate:.0} rows/s",
        args.deleted / 1_000_000,
        common.sessions / 1_000_000
    );
    let windows = [&floor, &m008, &purge];
    let writers: Vec<Sample> = windows.iter().flat_map(|w| w.writers.clone()).collect();
    let readers: Vec<Sample> = windows.iter().flat_map(|w| w.readers.clone()).collect();
    chart::throughput_timeline(
        &args.chart,
        &title,
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
            Series {
                name: &format!("purge batches ({} rows)", args.batch_size),
                samples: &batches,
                color: chart::INK_GREEN,
            },
        ],
        &[
            Span {
                label: "no work (floor)",
                from: floor.started,
                to: floor.ended,
            },
            Span {
                label: "m008",
                from: m008.started,
                to: m008.ended,
            },
            Span {
                label: "purge",
                from: purge.started,
                to: purge.ended,
            },
        ],
    )?;
    println!("chart: {}", args.chart.display());
    let _ = purger.close().await;
    bench.drop_database().await;
    if removed != args.deleted.min(common.sessions) as u64 {
        return Err(format!(
            "expected to purge {} rows, purged {removed}",
            args.deleted
        ));
    }
    Ok(())
}
