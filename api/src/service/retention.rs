//! The retention job: hard-deletes sessions soft-deleted longer ago than their owner's tier
//! keeps them (Free 7 days, Pro 30 by default), in bounded batches.
//!
//! Each batch is one short transaction:
//! 1. take the next `batch` soft-deleted rows older than the longest-possible cutoff, in
//!    `(deleted_at, id)` order after a keyset cursor: an index range scan on
//!    `idx_sessions_deleted_at` in the index's own order (no sort, see [`candidates`]) that
//!    locks only those session rows, with `SKIP LOCKED` on PostgreSQL and MySQL so several
//!    purgers at once take disjoint rows;
//! 2. look up their owners' retention tiers in the SQL `user_tiers` view, by primary key:
//!    Pro when the owner held Pro at any moment of the renewal grace (`retention_tier`, m010),
//!    so a renewal that arrives later than the grace still finds the trash Pro keeps;
//! 3. delete the rows past their owner's window, and move the cursor past the batch, so
//!    sessions that must stay are not read again.
//!
//! "Now" is the database's, read once when the purge starts: the `user_tiers` view decides
//! tiers by the database's clock, so the windows are measured by it too. With the host's
//! clock beside it, a host running ahead would purge by Free's window sessions whose owners
//! the view still counts as Pro, or the other way round.
//!
//! Nothing reads all of `users`. A session restored meanwhile is either locked by us first (the
//! restore then finds it gone, a 404) or already live (we never select it).

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use entity::Tier;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, IsolationLevel, SqliteTransactionMode,
    Statement, TransactionOptions, TransactionTrait,
};

use crate::settings::Limits;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub removed: u64,
    pub batches: u64,
}

/// Purges until nothing expired is left, by the database's clock, calling `progress` after
/// each batch.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn purge_expired(
    db: &DatabaseConnection,
    limits: &Limits,
    mut progress: impl FnMut(Purged),
) -> Result<Purged, DbErr> {
    let now = database_now(db).await?;
    let cutoff = |tier| {
        let keep =
            chrono::Duration::from_std(limits.retention(tier)).unwrap_or(chrono::Duration::MAX);
        now.checked_sub_signed(keep)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
            .fixed_offset()
    };
    let cutoffs = Cutoffs {
        free: cutoff(Tier::Free),
        pro: cutoff(Tier::Pro),
    };
    let batch = limits.purge_batch_size.max(1);
    let pause = Duration::from_millis(limits.purge_pause_ms);
    let mut cursor: Option<Cursor> = None;
    let mut total = Purged::default();
    loop {
        if total.batches > 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let mut attempt = 0u32;
        let outcome = loop {
            match purge_batch(db, &cutoffs, cursor.as_ref(), batch).await {
                Ok(outcome) => break outcome,
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
        let Some((removed, next)) = outcome else {
            return Ok(total);
        };
        cursor = Some(next);
        total.removed += removed;
        total.batches += 1;
        progress(total);
    }
}

const MAX_RETRIES: u32 = 20;

/// The database's clock, in UTC, to the microsecond: the clock the `user_tiers` view reads
/// (`now()` on PostgreSQL, `CURRENT_TIMESTAMP` on MySQL, `'now'` on SQLite). Read as text
/// in one format on every backend, so no driver's time-zone handling comes between.
pub async fn database_now<C: ConnectionTrait>(db: &C) -> Result<DateTime<Utc>, DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
        }
        DbBackend::MySql => "SELECT DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%d %H:%i:%s.%f')",
        _ => "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
    };
    let row = db
        .query_one_raw(Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| DbErr::Custom("the database did not tell its time".to_owned()))?;
    let text: String = row.try_get_by_index(0)?;
    NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|e| DbErr::Custom(format!("the database's time {text:?}: {e}")))
}

struct Cutoffs {
    free: DateTime<FixedOffset>,
    pro: DateTime<FixedOffset>,
}

/// Where the previous batch ended: `(deleted_at, id)` of its last row.
pub struct Cursor {
    pub deleted_at: DateTime<FixedOffset>,
    pub id: i64,
}

/// The next `batch` soft-deleted sessions older than `oldest_kept`, after `cursor`, in
/// `(deleted_at, id)` order, locked. Written so that the order is the index's own on every
/// backend (no sort, however many rows share a timestamp) and the cursor is an index bound:
/// * PostgreSQL: a row comparison, which is one index condition on the `(deleted_at, id)`
///   index (m008);
/// * MySQL/MariaDB: the comparison spelled out, which their range optimizer turns into a range
///   over `deleted_at` and the primary key InnoDB appends to every secondary index (a row
///   comparison there bounds only `deleted_at`, re-reading every tied row each batch);
/// * SQLite: a row comparison. The spelled-out form makes its planner merge two index scans
///   and sort them. It bounds only `deleted_at` and filters ties by rowid, but SQLite removes
///   a deleted row from the index at once, so a tie re-reads only the rows the purge keeps.
pub fn candidates(
    backend: DbBackend,
    oldest_kept: DateTime<FixedOffset>,
    cursor: Option<&Cursor>,
    batch: u64,
) -> Statement {
    let (after, mut values): (&str, Vec<sea_orm::Value>) = match (backend, cursor) {
        (_, None) => ("", vec![]),
        (DbBackend::MySql, Some(c)) => (
            " AND (deleted_at > ? OR (deleted_at = ? AND id > ?))",
            vec![c.deleted_at.into(), c.deleted_at.into(), c.id.into()],
        ),
        (DbBackend::Postgres, Some(c)) => (
            " AND (deleted_at, id) > ($2, $3)",
            vec![c.deleted_at.into(), c.id.into()],
        ),
        (_, Some(c)) => (
            " AND (deleted_at, id) > (?, ?)",
            vec![c.deleted_at.into(), c.id.into()],
        ),
    };
    values.insert(0, oldest_kept.into());
    let (first, lock) = match backend {
        // SKIP LOCKED lets several purgers take disjoint rows.
        DbBackend::Postgres => ("$1", " FOR UPDATE SKIP LOCKED"),
        DbBackend::MySql => ("?", " FOR UPDATE SKIP LOCKED"),
        // SQLite runs one writer at a time: nothing to skip.
        _ => ("?", ""),
    };
    let sql = format!(
        "SELECT id, user_id, deleted_at FROM synced_sessions \
         WHERE deleted_at IS NOT NULL AND deleted_at < {first}{after} \
         ORDER BY deleted_at, id LIMIT {batch}{lock}"
    );
    Statement::from_sql_and_values(backend, sql, values)
}

/// One batch in one short transaction: `None` when no candidate is left, else how many rows it
/// deleted and where it ended.
async fn purge_batch(
    db: &DatabaseConnection,
    cutoffs: &Cutoffs,
    cursor: Option<&Cursor>,
    batch: u64,
) -> Result<Option<(u64, Cursor)>, DbErr> {
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
    let oldest_kept = cutoffs.free.max(cutoffs.pro);
    let select = candidates(backend, oldest_kept, cursor, batch);
    let txn = db.begin_with_options(options).await?;
    let rows = txn.query_all_raw(select).await?;
    let mut taken = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get_by_index(0)?;
        let user_id: i64 = row.try_get_by_index(1)?;
        let deleted_at: DateTime<FixedOffset> = row.try_get_by_index(2)?;
        taken.push((id, user_id, deleted_at));
    }
    let Some(&(last_id, _, last_deleted_at)) = taken.last() else {
        txn.commit().await?;
        return Ok(None);
    };
    let owners: BTreeSet<i64> = taken.iter().map(|(_, user, _)| *user).collect();
    let owner_list = owners
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let tiers = txn
        .query_all_raw(Statement::from_string(
            backend,
            format!(
                "SELECT user_id, retention_tier FROM user_tiers WHERE user_id IN ({owner_list})"
            ),
        ))
        .await?;
    let mut pro = BTreeSet::new();
    for row in &tiers {
        let tier: String = row.try_get_by_index(1)?;
        if tier == "pro" {
            pro.insert(row.try_get_by_index::<i64>(0)?);
        }
    }
    let expired: Vec<String> = taken
        .iter()
        .filter(|(_, user, deleted_at)| {
            let cutoff = if pro.contains(user) {
                cutoffs.pro
            } else {
                cutoffs.free
            };
            *deleted_at < cutoff
        })
        .map(|(id, _, _)| id.to_string())
        .collect();
    let mut removed = 0;
    if !expired.is_empty() {
        removed = txn
            .execute_unprepared(&format!(
                "DELETE FROM synced_sessions WHERE id IN ({}) AND deleted_at IS NOT NULL",
                expired.join(", ")
            ))
            .await?
            .rows_affected();
    }
    txn.commit().await?;
    Ok(Some((
        removed,
        Cursor {
            deleted_at: last_deleted_at,
            id: last_id,
        },
    )))
}
