//! The retention purge under live traffic: 1M soft-deleted sessions among 5M (by default),
//! past the Free window, purged while writers and readers run. Reports rows per second and
//! the traffic's latency, beside a no-work window (the noise floor). m008, which reshapes the
//! index the purge reads, runs under the same traffic first, over the populated table.

use std::time::{Duration, Instant};

use chrono::Utc;
use migration::{Migrator, MigratorTrait};

use crate::load::{self, Bench, Common, Fill};

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
}

pub async fn run(args: Args) -> Result<(), String> {
    let common = &args.common;
    let bench = Bench::create(common).await?;
    let db = &bench.db;
    // Up to m007: m008 is measured below, over the populated table.
    Migrator::up(db, Some(7)).await.map_err(|e| e.to_string())?;
    let fill = Fill {
        deleted_sessions: Some(args.deleted),
        ..Fill::default()
    };
    load::populate(db, common.users, common.sessions, fill).await?;
    let margin = Duration::from_secs(1);
    load::noise_floor(db, common, margin, "no work").await;

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
    let started = Instant::now();
    let purge = load::measure(db, common, margin, async {
        let purged = api::service::retention::purge_expired(&purger, &limits, Utc::now(), |p| {
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
    println!(
        "purged {removed} rows in {:.1}s: {:.0} rows/s (batch {}, pause {} ms)",
        purge.wall.as_secs_f64(),
        removed as f64 / purge.wall.as_secs_f64().max(1e-9),
        args.batch_size,
        args.pause_ms
    );
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
