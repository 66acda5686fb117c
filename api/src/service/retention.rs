//! The retention job: hard-deletes sessions soft-deleted longer ago than their owner's tier
//! keeps them (Free 7 days, Pro 30 by default), in bounded batches.
//!
//! Each batch is one short transaction: pick up to `batch` expired rows in `deleted_at` order
//! (an index range scan on `idx_sessions_deleted_at`), locking them with `SKIP LOCKED` on
//! PostgreSQL and MySQL so that several purgers at once take disjoint batches, then delete
//! exactly those. The owner's tier comes from the SQL `user_tiers` view. A session restored
//! meanwhile is either locked by us first (the restore waits, then finds it gone) or already
//! live (we never select it).

use chrono::{DateTime, Utc};
use entity::Tier;
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, IsolationLevel, SqliteTransactionMode,
    Statement, TransactionOptions, TransactionTrait,
};

use crate::settings::Limits;

/// Rows per batch unless told otherwise: short transactions, few locks at a time.
pub const DEFAULT_BATCH: u64 = 1000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub removed: u64,
    pub batches: u64,
}

/// Purges until nothing expired is left, calling `progress` after each batch.
pub async fn purge_expired(
    db: &DatabaseConnection,
    limits: &Limits,
    batch: u64,
    now: DateTime<Utc>,
    mut progress: impl FnMut(Purged),
) -> Result<Purged, DbErr> {
    let cutoff = |tier| {
        let keep =
            chrono::Duration::from_std(limits.retention(tier)).unwrap_or(chrono::Duration::MAX);
        now.checked_sub_signed(keep)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
            .fixed_offset()
    };
    let (free_cutoff, pro_cutoff) = (cutoff(Tier::Free), cutoff(Tier::Pro));
    let later = free_cutoff.max(pro_cutoff);
    let backend = db.get_database_backend();
    let (p1, p2, p3, lock) = match backend {
        DbBackend::Postgres => ("$1", "$2", "$3", " FOR UPDATE OF s SKIP LOCKED"),
        DbBackend::MySql => ("?", "?", "?", " FOR UPDATE SKIP LOCKED"),
        // SQLite runs one writer at a time: nothing to skip.
        _ => ("?", "?", "?", ""),
    };
    let select = format!(
        "SELECT s.id FROM synced_sessions s \
         WHERE s.deleted_at IS NOT NULL AND s.deleted_at < {p1} \
         AND ((s.deleted_at < {p2} AND s.user_id IN (SELECT user_id FROM user_tiers WHERE tier = 'free')) \
           OR (s.deleted_at < {p3} AND s.user_id IN (SELECT user_id FROM user_tiers WHERE tier = 'pro'))) \
         ORDER BY s.deleted_at LIMIT {}{lock}",
        batch.max(1)
    );
    let values = [later.into(), free_cutoff.into(), pro_cutoff.into()];
    let mut total = Purged::default();
    loop {
        let mut attempt = 0u32;
        let removed = loop {
            match purge_batch(db, &select, &values).await {
                Ok(removed) => break removed,
                // Several purgers (and the API) touch the same rows and index pages: a deadlock
                // or busy database is a reason to try the batch again, not to fail.
                Err(err) if migration::step::is_lock_conflict(&err) && attempt < MAX_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %err, attempt, "purge batch conflicted; retrying");
                    tokio::time::sleep(Duration::from_millis(20) * attempt).await;
                }
                Err(err) => return Err(err),
            }
        };
        let Some(removed) = removed else {
            return Ok(total);
        };
        total.removed += removed;
        total.batches += 1;
        progress(total);
    }
}

const MAX_RETRIES: u32 = 20;

/// One batch in one short transaction; `None` when nothing expired is left.
async fn purge_batch(
    db: &DatabaseConnection,
    select: &str,
    values: &[sea_orm::Value; 3],
) -> Result<Option<u64>, DbErr> {
    let backend = db.get_database_backend();
    let options = match backend {
        // Row locks without gap locks; SKIP LOCKED does the rest.
        DbBackend::Postgres | DbBackend::MySql => TransactionOptions {
            isolation_level: Some(IsolationLevel::ReadCommitted),
            ..Default::default()
        },
        // Take the write lock up front so concurrent writers queue instead of failing.
        _ => TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        },
    };
    let txn = db.begin_with_options(options).await?;
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            select,
            values.clone(),
        ))
        .await?;
    let ids = rows
        .iter()
        .map(|row| row.try_get_by_index::<i64>(0))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        txn.commit().await?;
        return Ok(None);
    }
    let list = ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let deleted = txn
        .execute_unprepared(&format!(
            "DELETE FROM synced_sessions WHERE id IN ({list}) AND deleted_at IS NOT NULL"
        ))
        .await?;
    txn.commit().await?;
    Ok(Some(deleted.rows_affected()))
}
