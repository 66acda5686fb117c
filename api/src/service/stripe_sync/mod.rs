//! Applying Stripe events to the billing state, idempotently, in any order, all or nothing.
//!
//! # State
//!
//! * `stripe_events`: every event delivered (its id is the primary key, so a second delivery
//!   is recognised and changes nothing).
//! * `stripe_subscriptions`: the latest snapshot of each subscription. A snapshot replaces the
//!   stored one only when its key `(created, lifecycle rank, period end)` is greater, so a late,
//!   older event never rolls a subscription back, a duplicate changes nothing, and two
//!   same-second events resolve the same way whichever comes first (the later lifecycle stage
//!   wins). Snapshots of customers no user has yet are kept and count once checkout links them.
//!   With the snapshot go `past_due_since` (when the current past-due stretch began: the
//!   first snapshot showing it, see [`keep_snapshot`]), `ends_at_period_end` (Stripe said
//!   no renewal is coming, m011) and `price_grants_pro` (its items matched `PRO_PRICE_IDS`
//!   when it was written, m012), which the tier rule reads. A changed `price_grants_pro` is a
//!   changed state, so `stripe-sync` after a change of the list rewrites it. A delivery older
//!   than the stored snapshot answers [`Outcome::Stale`].
//! * `stripe_customers`: every customer we have heard of and the user it is linked to. A user
//!   keeps every customer they ever checked out with, so a second checkout orphans nothing: the
//!   first customer's renewals still apply. A customer is never linked to a second user.
//! * The user's `subscription_id`, `subscription_status` and `current_period_end` show the
//!   subscription that decides the tier among all of the user's subscriptions
//!   (`entity::decider`), and `stripe_customer_id` that subscription's customer (the customer
//!   linked last while none of the user's customers has a subscription).
//!
//! # All or nothing
//!
//! Recording an event and applying it happen in one transaction: if anything fails half-way
//! (the connection drops, the lock wait is cancelled, the process dies) nothing is recorded,
//! the delivery answers 5xx and Stripe's retry applies it. Nothing in here relies on a unique
//! violation inside the transaction (PostgreSQL would abort the whole transaction): rows are
//! looked up first, and the one violation a concurrent twin can still cause makes the whole
//! transaction start again, like a deadlock does.
//!
//! # Concurrency
//!
//! Every delivery locks its customer's row first, then the user's row: deliveries for one
//! customer run one after the other, and whichever of two deliveries for one user (through two
//! customers) locks the user last reads what the other committed (read committed on
//! PostgreSQL and MySQL; SQLite runs one writer at a time). Concurrent deliveries therefore end
//! in the state sequential ones would.

use crate::db::Db;
use crate::stripe::stored_time::stored_time;
use chrono::Utc;
use entity::{
    Standing, SubscriptionStatus, decider, stripe_customers, stripe_events, stripe_subscriptions,
    users,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction,
    DbBackend, DbErr, EntityTrait, IntoActiveModel, IsolationLevel, QueryFilter, QueryOrder,
    QuerySelect, SqlErr, SqliteTransactionMode, TransactionOptions, sea_query::Expr,
};

use crate::error::ApiError;
use crate::stripe::event::{Action, Event, Snapshot, lifecycle_rank};

mod batch;
pub use batch::{
    Grown, apply_fetched_subscriptions, link_customers, refresh_statistics, stored_subscriptions,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Delivered before; or, for a fetched snapshot, nothing changed.
    Duplicate,
    /// Kept; applied once checkout links the customer to a user.
    UnknownCustomer,
    UnknownUser,
    Ignored,
    /// Signed, but carrying a value no column can hold ([`EventError::Unstorable`]): logged
    /// and acknowledged, since no retry could ever store it.
    ///
    /// [`EventError::Unstorable`]: crate::stripe::event::EventError::Unstorable
    Unstorable,
    /// Signed, but lacking what the tier rule needs ([`EventError::Unusable`]): logged,
    /// acknowledged and not applied; the next event or `stripe-sync` sets the state.
    ///
    /// [`EventError::Unusable`]: crate::stripe::event::EventError::Unusable
    Unusable,
    /// Recorded, but older than the subscription's stored snapshot: it changed nothing.
    Stale,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::UnknownCustomer,
        Outcome::UnknownUser,
        Outcome::Ignored,
        Outcome::Unstorable,
        Outcome::Unusable,
        Outcome::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::UnknownCustomer => "unknown_customer",
            Outcome::UnknownUser => "unknown_user",
            Outcome::Ignored => "ignored",
            Outcome::Unstorable => "unstorable",
            Outcome::Unusable => "unusable",
            Outcome::Stale => "stale",
        }
    }
}

/// What linking a customer to a user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    Linked,
    AlreadyLinked,
    /// Refused: a customer belongs to one user.
    LinkedToAnotherUser,
    UnknownUser,
    /// Refused: Stripe has deleted this customer.
    CustomerDeleted,
}

/// Records and applies one webhook event, in one transaction.
#[tracing::instrument(level = "debug", skip_all, fields(event = %event.id, kind = %event.kind))]
pub async fn process(db: &Db, event: &Event) -> Result<Outcome, ApiError> {
    Ok(retrying!(db, |txn| process_in(txn, event)))
}

/// Applies a subscription's state as fetched from Stripe's API, as of `observed_at` by
/// Stripe's clock (seconds since the epoch; `stripe::client::Page::as_of`, never the host's
/// clock): ordered through the same per-subscription rule as webhook events, as one created a
/// second before `observed_at`, so that every event created at or after `observed_at` wins
/// over it, same second included; idempotent (the same snapshot twice changes nothing, and a
/// second run with nothing changed at Stripe writes nothing and grows no history).
///
/// Nothing is recorded in `stripe_events`. When the state equals the stored one, only the
/// stored snapshot's key moves (so an event created before the fetch still cannot roll it
/// back) and the answer is [`Outcome::Duplicate`]; the user's row is untouched. A stored state
/// that is newer also answers [`Outcome::Duplicate`]: the caller compares it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn apply_fetched_subscription(
    db: &Db,
    snapshot: &Snapshot,
    observed_at: i64,
) -> Result<Outcome, ApiError> {
    Ok(retrying!(db, |txn| async {
        Ok(fetched_outcome(
            apply_snapshot(txn, snapshot, observed_at - 1).await?,
        ))
    }))
}

/// What a fetched snapshot's write answers: [`Outcome::Duplicate`] when it changed no state.
fn fetched_outcome(applied: (Kept, Outcome)) -> Outcome {
    match applied {
        (Kept::Unchanged | Kept::Stale, Outcome::Applied) => Outcome::Duplicate,
        (_, outcome) => outcome,
    }
}

/// Links a Stripe customer to a user: never one customer to two users, and a user keeps every
/// customer linked before (their subscriptions go on counting), so no paid subscription is
/// orphaned. `users.stripe_customer_id` becomes this customer, unless a subscription of
/// another of the user's customers decides the tier.
#[tracing::instrument(level = "debug", skip_all, fields(user_id = user_id, customer = customer))]
pub async fn link_customer(db: &Db, user_id: i64, customer: &str) -> Result<LinkOutcome, ApiError> {
    Ok(retrying!(db, |txn| link(txn, user_id, customer, None)))
}

/// `stripe-sync` found the customer deleted at Stripe: as `customer.deleted` does. True when
/// this call marked it deleted; false when it was marked before (a webhook, an earlier run),
/// so that a run counts each customer it marked once.
#[tracing::instrument(level = "debug", skip_all, fields(customer = customer))]
pub async fn customer_deleted(db: &Db, customer: &str) -> Result<bool, ApiError> {
    Ok(retrying!(db, |txn| async {
        // Locked here first, so no other transaction marks it between this read and
        // `forget_customer`'s (which locks it again, in the same transaction).
        let live = lock_customer(txn, customer).await?.deleted_at.is_none();
        forget_customer(txn, customer).await?;
        Ok(live)
    }))
}

/// The user a customer is linked to, if any.
pub async fn user_of_customer(db: &Db, customer: &str) -> Result<Option<i64>, ApiError> {
    Ok(stripe_customers::Entity::find_by_id(customer)
        .one(db)
        .await?
        .and_then(|c| c.user_id))
}

/// The user each of `customers` is linked to, as [`user_of_customer`] reads it, in one query
/// (stripe-sync asks once per page of 100, not once per customer). Customers we do not have
/// are absent.
pub async fn users_of_customers(
    db: &Db,
    customers: &[String],
) -> Result<std::collections::HashMap<String, Option<i64>>, ApiError> {
    if customers.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let rows: Vec<(String, Option<i64>)> = stripe_customers::Entity::find()
        .select_only()
        .column(stripe_customers::Column::CustomerId)
        .column(stripe_customers::Column::UserId)
        .filter(stripe_customers::Column::CustomerId.is_in(customers.iter().map(String::as_str)))
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Attempts before a deadlock or a concurrent twin's insert becomes an error (5xx: Stripe
/// retries later).
const ATTEMPTS: u32 = 5;

/// Runs `$work` (a future using the transaction `$txn`) in a transaction, from the start
/// again when it conflicts with a concurrent one; every piece of work here is idempotent, so a
/// repeat is safe. Evaluates to the work's value, or returns the error as an `ApiError`.
/// A macro rather than a function: a closure returning a future that borrows its argument
/// cannot be named in a stable function signature.
macro_rules! retrying {
    ($db:expr, |$txn:ident| $work:expr) => {{
        let db: &Db = $db;
        let mut attempt = 1;
        loop {
            let txn = db
                .begin_with_options($crate::service::stripe_sync::options(
                    db.get_database_backend(),
                ))
                .await?;
            let result = {
                let $txn = &txn;
                $work.await
            };
            let result = match result {
                Ok(value) => txn.commit().await.map(|()| value),
                Err(err) => {
                    // Best effort: the connection may be gone; the error that matters is `err`.
                    let _ = txn.rollback().await;
                    Err(err)
                }
            };
            match result {
                Ok(value) => break value,
                Err(err)
                    if attempt < $crate::service::stripe_sync::ATTEMPTS
                        && $crate::service::stripe_sync::worth_retrying(&err) =>
                {
                    tracing::debug!(error = %err, attempt, "Stripe write conflicted; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(
                        10 * u64::from(attempt),
                    ))
                    .await;
                    attempt += 1;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }};
}
use retrying;

fn options(backend: DbBackend) -> TransactionOptions {
    match backend {
        // Each statement sees what committed before it, in particular after a lock wait.
        DbBackend::Postgres | DbBackend::MySql => TransactionOptions {
            isolation_level: Some(IsolationLevel::ReadCommitted),
            ..Default::default()
        },
        // Take the write lock up front: a read-then-write transaction cannot be upgraded once
        // another writer has begun.
        _ => TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        },
    }
}

/// A deadlock, a serialization failure, a busy SQLite database or a concurrent twin's insert:
/// over in an instant, so worth starting again. Not a lock wait that timed out: whoever holds
/// the row holds it long, and Stripe's own retry comes later anyway.
fn worth_retrying(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx::mysql::MySqlDatabaseError};
    if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        return true;
    }
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    let Some(db_err) = e.as_database_error() else {
        return false;
    };
    if let Some(mysql) = db_err.try_downcast_ref::<MySqlDatabaseError>() {
        return mysql.number() == 1213;
    }
    matches!(
        db_err.code().as_deref(),
        Some("40P01" | "40001" | "5" | "6" | "517" | "261")
    )
}

async fn process_in(txn: &DatabaseTransaction, event: &Event) -> Result<Outcome, DbErr> {
    if !record(txn, event).await? {
        return Ok(Outcome::Duplicate);
    }
    pause_after_record(&event.id).await;
    match &event.action {
        Action::Unhandled => Ok(Outcome::Ignored),
        Action::Subscription(snapshot) => {
            Ok(match apply_snapshot(txn, snapshot, event.created).await? {
                (Kept::Stale, Outcome::Applied) => Outcome::Stale,
                (_, outcome) => outcome,
            })
        }
        Action::LinkCustomer {
            user_id: Some(user_id),
            customer: Some(customer),
            subscription,
        } => Ok(
            match link(txn, *user_id, customer, subscription.as_deref()).await? {
                LinkOutcome::Linked | LinkOutcome::AlreadyLinked => Outcome::Applied,
                LinkOutcome::UnknownUser => Outcome::UnknownUser,
                LinkOutcome::LinkedToAnotherUser | LinkOutcome::CustomerDeleted => Outcome::Ignored,
            },
        ),
        Action::LinkCustomer { .. } => Ok(Outcome::UnknownUser),
        Action::CustomerDeleted { customer } => forget_customer(txn, customer).await,
    }
}

/// Test-only fault injection: with `WEBHOOK_PAUSE_AFTER_RECORD=1` a delivery stops between
/// recording the event and applying it, transaction open, and says so on stderr, so a test can
/// SIGKILL the server there. Unset, it costs one environment lookup per delivery.
///
/// Compiled into debug builds only, the ones tests run; a release build has no such hook and
/// ignores the variable. Not `cfg(test)`: the tests run the `billing` binary, which is not
/// built with it. Not a cargo feature: `cargo build` after `cargo test` would then rebuild
/// the crate, which CI's `.ci/built-binaries --fresh` refuses.
#[cfg(debug_assertions)]
async fn pause_after_record(event: &str) {
    if std::env::var("WEBHOOK_PAUSE_AFTER_RECORD").as_deref() != Ok("1") {
        return;
    }
    eprintln!("paused after recording {event}");
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

#[cfg(not(debug_assertions))]
async fn pause_after_record(_event: &str) {}

/// Stores the event; false when it was stored before (a repeated delivery). A concurrent
/// twin's insert shows as a unique violation, which restarts the transaction.
async fn record<C: ConnectionTrait>(db: &C, event: &Event) -> Result<bool, DbErr> {
    if stripe_events::Entity::find_by_id(event.id.as_str())
        .one(db)
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let (customer, subscription, status, period_end) = match &event.action {
        Action::Subscription(s) => (
            Some(s.customer.clone()),
            Some(s.subscription.clone()),
            Some(s.status.as_str().to_owned()),
            s.current_period_end.map(stored_time),
        ),
        Action::LinkCustomer {
            customer,
            subscription,
            ..
        } => (customer.clone(), subscription.clone(), None, None),
        Action::CustomerDeleted { customer } => (Some(customer.clone()), None, None, None),
        Action::Unhandled => (None, None, None, None),
    };
    stripe_events::ActiveModel {
        id: Set(event.id.clone()),
        event_type: Set(event.kind.clone()),
        created: Set(event.created),
        customer_id: Set(customer),
        subscription_id: Set(subscription),
        status: Set(status),
        current_period_end: Set(period_end),
        received_at: Set(Utc::now().fixed_offset()),
    }
    .insert(db)
    .await?;
    Ok(true)
}

/// The customer's row, created if new, locked until the transaction ends: the point where
/// deliveries for one customer queue up.
async fn lock_customer<C: ConnectionTrait>(
    db: &C,
    customer: &str,
) -> Result<stripe_customers::Model, DbErr> {
    let found = stripe_customers::Entity::find_by_id(customer)
        .lock_exclusive()
        .one(db)
        .await?;
    if let Some(found) = found {
        return Ok(found);
    }
    stripe_customers::ActiveModel {
        customer_id: Set(customer.to_owned()),
        user_id: Set(None),
        deleted_at: Set(None),
        created_at: Set(Utc::now().fixed_offset()),
    }
    .insert(db)
    .await
}

/// The user a live customer is linked to.
fn linked_user(customer: &stripe_customers::Model) -> Option<i64> {
    customer.user_id.filter(|_| customer.deleted_at.is_none())
}

/// What storing a snapshot did to its subscription's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// New subscription, or a newer snapshot with a different state.
    Changed,
    /// Newer, same state: only the key moved.
    Unchanged,
    /// Not newer than the stored snapshot (a duplicate or a late, older one).
    Stale,
}

/// A snapshot's order among its subscription's snapshots.
type Key = (i64, u8, Option<chrono::DateTime<chrono::FixedOffset>>);

async fn apply_snapshot<C: ConnectionTrait>(
    db: &C,
    snapshot: &Snapshot,
    created: i64,
) -> Result<(Kept, Outcome), DbErr> {
    let customer = lock_customer(db, &snapshot.customer).await?;
    let kept = keep_snapshot(db, snapshot, created).await?;
    let Some(user_id) = linked_user(&customer) else {
        return Ok((kept, Outcome::UnknownCustomer));
    };
    if kept == Kept::Changed {
        refresh_user(db, user_id, IfNone::Keep).await?;
    }
    Ok((kept, Outcome::Applied))
}

/// Stores `snapshot` as its subscription's state if its key is greater than the stored one's.
/// `created` is the event's time (or the fetch's, for `stripe-sync`).
///
/// `past_due_since` is the start of the current past-due stretch, the first snapshot showing
/// it: a newer `past_due` snapshot over a stored `past_due` one continues the stretch and
/// keeps the earlier start, even when the period has moved on (dunning set to leave
/// subscriptions past due invoices period after period: counting from each new period's
/// failure would give 7 days of unpaid Pro every period). An older `past_due` snapshot of the
/// same period (a late first event) moves the start back, and changes nothing else; one of
/// another period may belong to an earlier stretch, and changes nothing. Any other status
/// clears it.
async fn keep_snapshot<C: ConnectionTrait>(
    db: &C,
    snapshot: &Snapshot,
    created: i64,
) -> Result<Kept, DbErr> {
    let stored = stripe_subscriptions::Entity::find_by_id(snapshot.subscription.as_str())
        .lock_exclusive()
        .one(db)
        .await?;
    let plan = plan_keep(stored, snapshot, created, Utc::now().fixed_offset());
    let kept = plan.kept();
    match plan {
        Keep::Insert(row) => {
            row.insert(db).await?;
        }
        Keep::Update(row) => {
            row.update(db).await?;
        }
        Keep::MoveKey { created, rank } => {
            move_keys(db, &[snapshot.subscription.as_str()], created, rank).await?;
        }
        Keep::Stale => {}
    }
    Ok(kept)
}

/// What storing a snapshot over its subscription's stored row (locked) comes to: the write it
/// needs, decided without writing, so that one subscription's write and a page's
/// ([`batch`]) follow the one rule.
enum Keep {
    /// A subscription not stored before.
    Insert(stripe_subscriptions::ActiveModel),
    /// A changed state ([`Kept::Changed`]): a newer snapshot that differs, or an older one
    /// of the same period that dates the past-due stretch earlier.
    Update(stripe_subscriptions::ActiveModel),
    /// Newer, same state ([`Kept::Unchanged`]): only the key moves.
    MoveKey { created: i64, rank: i16 },
    /// Not newer ([`Kept::Stale`]): nothing to write.
    Stale,
}

impl Keep {
    fn kept(&self) -> Kept {
        match self {
            Keep::Insert(_) | Keep::Update(_) => Kept::Changed,
            Keep::MoveKey { .. } => Kept::Unchanged,
            Keep::Stale => Kept::Stale,
        }
    }
}

fn plan_keep(
    stored: Option<stripe_subscriptions::Model>,
    snapshot: &Snapshot,
    created: i64,
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Keep {
    let period_end = snapshot.current_period_end.map(stored_time);
    let rank = lifecycle_rank(snapshot.status);
    let incoming: Key = (created, rank, period_end);
    let failed_at = past_due_start(snapshot, created);
    let Some(stored) = stored else {
        return Keep::Insert(stripe_subscriptions::ActiveModel {
            subscription_id: Set(snapshot.subscription.clone()),
            customer_id: Set(snapshot.customer.clone()),
            status: Set(snapshot.status.as_str().to_owned()),
            current_period_end: Set(period_end),
            created: Set(created),
            lifecycle_rank: Set(i16::from(rank)),
            updated_at: Set(now),
            past_due_since: Set(failed_at),
            ends_at_period_end: Set(snapshot.ends_at_period_end),
            price_grants_pro: Set(snapshot.price_grants_pro),
        });
    };
    let still_past_due =
        failed_at.is_some() && stored.status == SubscriptionStatus::PastDue.as_str();
    let past_due_since = match (still_past_due, stored.past_due_since, failed_at) {
        (true, Some(stored_since), Some(incoming_since)) => Some(stored_since.min(incoming_since)),
        (_, _, incoming_since) => incoming_since,
    };
    let stored_key: Key = (
        stored.created,
        u8::try_from(stored.lifecycle_rank).unwrap_or(u8::MAX),
        stored.current_period_end,
    );
    if incoming <= stored_key {
        // Older, but of the same period it may date the stretch's start earlier.
        if still_past_due
            && stored.current_period_end == period_end
            && past_due_since != stored.past_due_since
        {
            let mut row = stored.into_active_model();
            row.past_due_since = Set(past_due_since);
            row.updated_at = Set(now);
            return Keep::Update(row);
        }
        return Keep::Stale;
    }
    let same_state = stored.status == snapshot.status.as_str()
        && stored.current_period_end == period_end
        && stored.past_due_since == past_due_since
        && stored.ends_at_period_end == snapshot.ends_at_period_end
        // The Pro list changed since it was stored: a changed state.
        && stored.price_grants_pro == snapshot.price_grants_pro;
    if same_state {
        return Keep::MoveKey {
            created,
            rank: i16::from(rank),
        };
    }
    let mut row = stored.into_active_model();
    row.created = Set(created);
    row.lifecycle_rank = Set(i16::from(rank));
    row.status = Set(snapshot.status.as_str().to_owned());
    row.current_period_end = Set(period_end);
    row.past_due_since = Set(past_due_since);
    row.ends_at_period_end = Set(snapshot.ends_at_period_end);
    row.price_grants_pro = Set(snapshot.price_grants_pro);
    row.updated_at = Set(now);
    Keep::Update(row)
}

/// Moves the stored key of `subscriptions` (unchanged states) to `(created, rank)`, in one
/// statement: so that an event created before the read can no longer roll them back.
async fn move_keys<C: ConnectionTrait>(
    db: &C,
    subscriptions: &[&str],
    created: i64,
    rank: i16,
) -> Result<(), DbErr> {
    stripe_subscriptions::Entity::update_many()
        .col_expr(stripe_subscriptions::Column::Created, Expr::value(created))
        .col_expr(
            stripe_subscriptions::Column::LifecycleRank,
            Expr::value(rank),
        )
        .filter(stripe_subscriptions::Column::SubscriptionId.is_in(subscriptions.iter().copied()))
        .exec(db)
        .await?;
    Ok(())
}

/// When a `past_due` snapshot says the payment failed: the open renewal invoice's
/// finalization when the object carries it, else the snapshot's own time, whichever is
/// earlier. None for any other status.
fn past_due_start(
    snapshot: &Snapshot,
    created: i64,
) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    if snapshot.status != SubscriptionStatus::PastDue {
        return None;
    }
    let seen = chrono::DateTime::from_timestamp(created, 0);
    let start = match (seen, snapshot.unpaid_invoice_since) {
        (Some(seen), Some(invoice)) => Some(seen.min(invoice)),
        (seen, invoice) => seen.or(invoice),
    };
    // An instant chrono cannot hold still marks the subscription past due: from now.
    Some(stored_time(start.unwrap_or_else(Utc::now)))
}

/// What the user's columns become when none of their customers has a subscription.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IfNone {
    /// Leave them (set by hand, or checkout's subscription not described yet).
    Keep,
    /// `customer.deleted`: no subscription, status `canceled`.
    Cancel,
}

/// Sets the user's billing columns to the subscription that decides the tier now, over every
/// customer linked to them, and `stripe_customer_id` to that subscription's customer (so the
/// columns do not depend on the order checkouts arrived in). Locks the user's row.
async fn refresh_user<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    if_none: IfNone,
) -> Result<(), DbErr> {
    let Some(user) = super::lock_user_rows(db, users::Entity::find_by_id(user_id))
        .one(db)
        .await?
    else {
        return Ok(());
    };
    let rows = entity::subscriptions_of(db, user_id).await?;
    settle_user(db, user, &rows, if_none).await
}

/// [`refresh_user`]'s work once the user's row is locked and `rows` are every subscription
/// of their live customers: sets the columns, when they change.
async fn settle_user<C: ConnectionTrait>(
    db: &C,
    user: users::Model,
    rows: &[stripe_subscriptions::Model],
    if_none: IfNone,
) -> Result<(), DbErr> {
    let Some(columns) = settled(&user, rows, if_none) else {
        return Ok(());
    };
    let mut active = user.into_active_model();
    active.stripe_customer_id = Set(columns.stripe_customer_id);
    active.subscription_id = Set(columns.subscription_id);
    active.subscription_status = Set(columns.subscription_status);
    active.current_period_end = Set(columns.current_period_end);
    active.past_due_since = Set(columns.past_due_since);
    active.ends_at_period_end = Set(columns.ends_at_period_end);
    active.price_grants_pro = Set(columns.price_grants_pro);
    active.updated_at = Set(Utc::now().fixed_offset());
    active.update(db).await?;
    Ok(())
}

/// A user's billing columns, as [`settled`] decides them.
struct UserColumns {
    stripe_customer_id: Option<String>,
    subscription_id: Option<String>,
    subscription_status: String,
    current_period_end: Option<chrono::DateTime<chrono::FixedOffset>>,
    past_due_since: Option<chrono::DateTime<chrono::FixedOffset>>,
    ends_at_period_end: bool,
    price_grants_pro: bool,
}

/// The user's columns as the subscription that decides the tier among `rows` (every
/// subscription of their live customers) sets them; `None` when they would not change.
fn settled(
    user: &users::Model,
    rows: &[stripe_subscriptions::Model],
    if_none: IfNone,
) -> Option<UserColumns> {
    let standings: Vec<Standing> = rows.iter().map(Standing::from).collect();
    let decides = decider(&standings, Utc::now());
    let (customer, decides) = match decides {
        Some(decides) => (
            rows.iter()
                .find(|row| Some(&row.subscription_id) == decides.subscription_id.as_ref())
                .map(|row| row.customer_id.clone())
                .or_else(|| user.stripe_customer_id.clone()),
            decides.clone(),
        ),
        None if if_none == IfNone::Cancel => (
            user.stripe_customer_id.clone(),
            Standing {
                subscription_id: None,
                status: SubscriptionStatus::Canceled,
                current_period_end: None,
                past_due_since: None,
                ends_at_period_end: false,
                price_grants_pro: true,
            },
        ),
        None => return None,
    };
    // The column admits m006's six statuses (m011 says why): `incomplete` and `paused` show
    // as the nearest, which grant nothing either.
    let status = decides.status.for_user_column();
    let columns = UserColumns {
        stripe_customer_id: customer,
        subscription_id: decides.subscription_id,
        subscription_status: status.as_str().to_owned(),
        current_period_end: decides.current_period_end.map(stored_time),
        past_due_since: decides.past_due_since.map(stored_time),
        ends_at_period_end: decides.ends_at_period_end,
        price_grants_pro: decides.price_grants_pro,
    };
    let unchanged = user.stripe_customer_id == columns.stripe_customer_id
        && user.subscription_id == columns.subscription_id
        && user.subscription_status == columns.subscription_status
        && user.current_period_end == columns.current_period_end
        && user.past_due_since == columns.past_due_since
        && user.ends_at_period_end == columns.ends_at_period_end
        && user.price_grants_pro == columns.price_grants_pro;
    (!unchanged).then_some(columns)
}

/// Checkout completed: link `customer` to `user_id` under the rules of [`link_customer`].
/// `subscription` (checkout's) names the user's subscription until an event describes one.
async fn link<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    customer: &str,
    subscription: Option<&str>,
) -> Result<LinkOutcome, DbErr> {
    let row = lock_customer(db, customer).await?;
    if let Some(refused) = customer_refuses(&row, user_id) {
        return Ok(refused);
    }
    let user = super::lock_user_rows(db, users::Entity::find_by_id(user_id))
        .one(db)
        .await?;
    // Checked, not left to the unique index: a violation would abort the transaction on
    // PostgreSQL and take the event's record with it.
    let claimed = users::Entity::find()
        .filter(users::Column::StripeCustomerId.eq(customer))
        .filter(users::Column::Id.ne(user_id))
        .one(db)
        .await?;
    let user = match user_refuses(user, claimed.map(|other| other.id), user_id, customer) {
        Ok(user) => user,
        Err(refused) => return Ok(refused),
    };
    let mut linked = row.into_active_model();
    linked.user_id = Set(Some(user_id));
    linked.update(db).await?;
    let mut active = user.clone().into_active_model();
    active.stripe_customer_id = Set(Some(customer.to_owned()));
    if user.subscription_id.is_none()
        && let Some(subscription) = subscription
    {
        active.subscription_id = Set(Some(subscription.to_owned()));
    }
    active.updated_at = Set(Utc::now().fixed_offset());
    active.update(db).await?;
    refresh_user(db, user_id, IfNone::Keep).await?;
    Ok(LinkOutcome::Linked)
}

/// What the customer's (locked) row says of linking it to `user_id`, when that settles it:
/// deleted at Stripe, linked to this user already, or to another.
fn customer_refuses(row: &stripe_customers::Model, user_id: i64) -> Option<LinkOutcome> {
    let customer = row.customer_id.as_str();
    if row.deleted_at.is_some() {
        tracing::info!(
            customer,
            "checkout for a customer Stripe has since deleted; not linked"
        );
        return Some(LinkOutcome::CustomerDeleted);
    }
    match row.user_id {
        Some(owner) if owner == user_id => Some(LinkOutcome::AlreadyLinked),
        Some(owner) => {
            tracing::warn!(
                user_id,
                owner,
                customer,
                "customer already linked to another user; not linked"
            );
            Some(LinkOutcome::LinkedToAnotherUser)
        }
        None => None,
    }
}

/// The user to link the customer to (their locked row), unless we have no such user or
/// another user's `stripe_customer_id` holds the customer (`claimed_by`).
fn user_refuses(
    user: Option<users::Model>,
    claimed_by: Option<i64>,
    user_id: i64,
    customer: &str,
) -> Result<users::Model, LinkOutcome> {
    let Some(user) = user else {
        tracing::warn!(user_id, customer, "checkout names a user we do not have");
        return Err(LinkOutcome::UnknownUser);
    };
    if let Some(owner) = claimed_by.filter(|&owner| owner != user_id) {
        tracing::warn!(
            user_id,
            owner,
            customer,
            "customer already linked to another user; not linked"
        );
        return Err(LinkOutcome::LinkedToAnotherUser);
    }
    if let Some(previous) = &user.stripe_customer_id
        && previous != customer
    {
        tracing::info!(
            user_id,
            previous,
            customer,
            "user linked to a second Stripe customer; both count"
        );
    }
    Ok(user)
}

/// `customer.deleted`: the customer's subscriptions stop counting and it is never linked
/// again. The user's columns fall back to their other customers, or to `canceled`.
async fn forget_customer<C: ConnectionTrait>(db: &C, customer: &str) -> Result<Outcome, DbErr> {
    let row = lock_customer(db, customer).await?;
    let user_id = linked_user(&row);
    if row.deleted_at.is_none() {
        let mut deleted = row.into_active_model();
        deleted.deleted_at = Set(Some(Utc::now().fixed_offset()));
        deleted.update(db).await?;
    }
    let Some(user_id) = user_id else {
        return Ok(Outcome::UnknownCustomer);
    };
    let Some(user) = super::lock_user_rows(db, users::Entity::find_by_id(user_id))
        .one(db)
        .await?
    else {
        return Ok(Outcome::UnknownCustomer);
    };
    if user.stripe_customer_id.as_deref() == Some(customer) {
        let other = stripe_customers::Entity::find()
            .filter(stripe_customers::Column::UserId.eq(user_id))
            .filter(stripe_customers::Column::DeletedAt.is_null())
            .order_by_desc(stripe_customers::Column::CreatedAt)
            .order_by_desc(stripe_customers::Column::CustomerId)
            .one(db)
            .await?;
        let mut active = user.into_active_model();
        active.stripe_customer_id = Set(other.map(|c| c.customer_id));
        active.updated_at = Set(Utc::now().fixed_offset());
        active.update(db).await?;
    }
    refresh_user(db, user_id, IfNone::Cancel).await?;
    Ok(Outcome::Applied)
}
