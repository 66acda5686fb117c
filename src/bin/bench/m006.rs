//! m006 under live traffic: a no-migration window (the noise floor), m006 through the real
//! migrator, and the unit card's SQL in one transaction (what a stock SeaORM migration does),
//! with the same writers and readers.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::load::{self, Bench, Common, Fill};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Seconds of traffic before and after each migration.
    #[arg(long, default_value_t = 1)]
    pub margin: u64,
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

pub async fn run(args: Args) -> Result<(), String> {
    let common = &args.common;
    let bench = Bench::create(common).await?;
    let db = &bench.db;
    Migrator::up(db, Some(5)).await.map_err(|e| e.to_string())?;
    load::populate(db, common.users, common.sessions, Fill::default()).await?;
    let margin = Duration::from_secs(args.margin);

    load::noise_floor(db, common, margin, "no migration").await;

    let migrate = load::connect(&bench.url, 4).await?;
    let ours = load::measure(db, common, margin, async {
        Migrator::up(&migrate, Some(1))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    load::report("m006 migrator", &ours);
    Migrator::down(&migrate, Some(1))
        .await
        .map_err(|e| e.to_string())?;

    let card = load::measure(db, common, margin, async {
        let txn = migrate.begin().await.map_err(|e| e.to_string())?;
        txn.execute_unprepared(CARD_SQL)
            .await
            .map_err(|e| e.to_string())?;
        txn.commit().await.map_err(|e| e.to_string())
    })
    .await;
    load::report("card SQL, 1 txn", &card);
    let _ = migrate.close().await;
    bench.drop_database().await;
    Ok(())
}
