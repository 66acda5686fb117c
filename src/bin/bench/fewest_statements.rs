//! The second floor of `bench webhooks`: the fewest statements a correct delivery of a
//! `customer.subscription.updated` event needs on PostgreSQL, written by hand, in one
//! read-committed transaction as the API opens its own. Four, each one round trip:
//!
//! 1. record the event, `ON CONFLICT (id) DO NOTHING RETURNING id`: no row back is a repeated
//!    delivery, and the transaction ends there (no lookup first, no unique violation);
//! 2. lock the customer's row and its user's row in one statement (`FOR UPDATE OF c FOR NO KEY
//!    UPDATE OF u`), customer first as the API orders them: deliveries for one customer queue
//!    on the customer, deliveries for one user through two customers on the user;
//! 3. upsert the subscription's snapshot under the ordering rule: `ON CONFLICT DO UPDATE …
//!    WHERE` the stored key `(created, lifecycle rank, period end)` is smaller, keeping the
//!    start of a continuing past-due stretch;
//! 4. recompute the user's columns from all of their subscriptions in one `UPDATE`.
//!
//! Why not three (the user's recompute folded into the upsert, or the lock into the update):
//! under read committed a statement reads the snapshot taken when it began, also after it has
//! waited for a row lock. An `UPDATE users … = (SELECT … FROM stripe_subscriptions …)` that
//! queued behind another delivery for the same user (through another customer) would then
//! recompute without that delivery's subscription and write the user's columns without it: a
//! lost update. The lock must be taken by an earlier statement, so that the recompute's
//! snapshot begins after every delivery it queued behind has committed.
//!
//! What this floor leaves out, so it is a lower bound on cost, not a second implementation:
//! an unknown customer (the API creates its row; here the statement finds none and the
//! delivery counts as failed), the late older snapshot that dates a past-due stretch earlier,
//! and the tier rule itself: the `ORDER BY` of statement 4 stands in for `entity::decider`
//! (it reads the same rows and writes the same row, which is what costs).

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, IsolationLevel, Statement,
    TransactionOptions, TransactionTrait, Value,
};

const RECORD: &str = "INSERT INTO stripe_events \
     (id, event_type, created, customer_id, subscription_id, status, current_period_end, received_at) \
     VALUES ($1, 'customer.subscription.updated', $2, $3, $4, $5, to_timestamp($6), now()) \
     ON CONFLICT (id) DO NOTHING RETURNING id";

const LOCK: &str = "SELECT c.user_id FROM stripe_customers c JOIN users u ON u.id = c.user_id \
     WHERE c.customer_id = $1 AND c.deleted_at IS NULL \
     FOR UPDATE OF c FOR NO KEY UPDATE OF u";

const UPSERT: &str = "INSERT INTO stripe_subscriptions AS s \
     (subscription_id, customer_id, status, current_period_end, created, lifecycle_rank, \
      updated_at, past_due_since, ends_at_period_end, price_grants_pro) \
     VALUES ($1, $2, $3, to_timestamp($4), $5, $6, now(), \
      CASE WHEN $3 = 'past_due' THEN to_timestamp($5) END, false, true) \
     ON CONFLICT (subscription_id) DO UPDATE SET \
      status = excluded.status, current_period_end = excluded.current_period_end, \
      created = excluded.created, lifecycle_rank = excluded.lifecycle_rank, \
      updated_at = excluded.updated_at, \
      past_due_since = CASE WHEN excluded.status = 'past_due' AND s.status = 'past_due' \
       THEN LEAST(s.past_due_since, excluded.past_due_since) ELSE excluded.past_due_since END, \
      ends_at_period_end = excluded.ends_at_period_end, \
      price_grants_pro = excluded.price_grants_pro \
     WHERE (s.created, s.lifecycle_rank, COALESCE(s.current_period_end, '-infinity')) \
      < (excluded.created, excluded.lifecycle_rank, COALESCE(excluded.current_period_end, '-infinity')) \
     RETURNING 1";

const RECOMPUTE: &str = "UPDATE users SET \
     (stripe_customer_id, subscription_id, subscription_status, current_period_end, \
      past_due_since, ends_at_period_end, price_grants_pro, updated_at) = \
     (SELECT s.customer_id, s.subscription_id, s.status, s.current_period_end, \
       s.past_due_since, s.ends_at_period_end, s.price_grants_pro, now() \
      FROM stripe_subscriptions s JOIN stripe_customers c ON c.customer_id = s.customer_id \
      WHERE c.user_id = $1 AND c.deleted_at IS NULL \
      ORDER BY CASE s.status WHEN 'active' THEN 3 WHEN 'trialing' THEN 2 WHEN 'past_due' THEN 1 \
       ELSE 0 END DESC, s.current_period_end DESC NULLS LAST, s.subscription_id \
      LIMIT 1) \
     WHERE id = $1";

/// One delivery's facts, as the event carries them.
pub struct Delivery<'a> {
    pub event: &'a str,
    pub created: i64,
    pub customer: &'a str,
    pub subscription: &'a str,
    pub status: &'a str,
    pub period_end: i64,
}

/// How one delivery ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Recorded and applied; the user whose columns were recomputed.
    ToUser(i64),
    /// Recorded before: nothing changed.
    Repeated,
    /// Recorded, but older than the stored snapshot: nothing else changed.
    Stale,
}

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Applies one delivery with the four statements above.
pub async fn deliver(db: &DatabaseConnection, d: &Delivery<'_>) -> Result<Applied, DbErr> {
    let status = match d.status.parse::<entity::SubscriptionStatus>() {
        Ok(status) => status,
        Err(e) => return Err(DbErr::Custom(e.to_string())),
    };
    let rank = i16::from(api::stripe::event::lifecycle_rank(status));
    let txn = db
        .begin_with_options(TransactionOptions {
            isolation_level: Some(IsolationLevel::ReadCommitted),
            ..Default::default()
        })
        .await?;
    let text = |s: &str| Value::from(s.to_owned());
    let recorded = txn
        .query_one_raw(statement(
            RECORD,
            vec![
                text(d.event),
                d.created.into(),
                text(d.customer),
                text(d.subscription),
                text(d.status),
                d.period_end.into(),
            ],
        ))
        .await?;
    if recorded.is_none() {
        txn.commit().await?;
        return Ok(Applied::Repeated);
    }
    let Some(locked) = txn
        .query_one_raw(statement(LOCK, vec![text(d.customer)]))
        .await?
    else {
        return Err(DbErr::Custom(format!(
            "customer {} is not linked to a user: the fewest-statements floor covers linked customers only",
            d.customer
        )));
    };
    let user: i64 = locked.try_get_by_index(0)?;
    let written = txn
        .query_one_raw(statement(
            UPSERT,
            vec![
                text(d.subscription),
                text(d.customer),
                text(d.status),
                d.period_end.into(),
                d.created.into(),
                rank.into(),
            ],
        ))
        .await?;
    if written.is_none() {
        txn.commit().await?;
        return Ok(Applied::Stale);
    }
    txn.execute_raw(statement(RECOMPUTE, vec![user.into()]))
        .await?;
    txn.commit().await?;
    Ok(Applied::ToUser(user))
}

/// The round trips of one applied delivery, for the report.
pub const STATEMENTS: usize = 4;
