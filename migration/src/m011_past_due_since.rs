//! Grace counted from the failed payment: `past_due_since` and `ends_at_period_end` on
//! `stripe_subscriptions` and on `users`, and a `user_tiers` view that reads them.
//!
//! Until now `past_due` kept Pro until `current_period_end` + 7 days. Stripe moves the period
//! to the new one when it *invoices* a renewal, before it tries the charge, so a `past_due`
//! subscription's period end is the end of the period nobody has paid for: the old rule gave a
//! month (a year, on a yearly plan) of unpaid Pro, and for ever when dunning leaves the
//! subscription past due. Now:
//!
//! * `past_due_since`: when the subscription became `past_due` (the first event showing it, or
//!   the renewal invoice's finalization when the event carries it expanded). `past_due` keeps
//!   Pro for [`PAST_DUE_GRACE_DAYS`] from then; with no value it grants nothing.
//! * `ends_at_period_end`: Stripe has said the subscription ends at the period end
//!   (`cancel_at_period_end`, or a trial ending with no payment method to charge). Such an
//!   `active`/`trialing` subscription keeps Pro until the period end exactly: no
//!   [`RENEWAL_GRACE_DAYS`], since no renewal is coming.
//!
//! The user's columns get both too: they are a copy of the subscription that decides (or were
//! set by hand), and the view counts them as one more subscription.
//!
//! # Why each step is shaped as it is
//!
//! * **No wrapping transaction** (`use_transaction() -> Some(false)`), as in m006 and m010:
//!   each step commits on its own, so no lock is held across steps.
//! * **The column adds are metadata-only and lock-timed.** A nullable timestamp and a `NOT NULL
//!   DEFAULT FALSE` boolean: PostgreSQL 11+ keeps a constant default in the catalog (no
//!   rewrite, ACCESS EXCLUSIVE for an instant), MySQL/MariaDB add them `ALGORITHM=INSTANT`, and
//!   SQLite only edits the schema text. The ACCESS EXCLUSIVE (PostgreSQL) or metadata lock
//!   (MySQL) is still queued behind any long transaction on `users`, hence the lock timeout and
//!   retries with backoff that the dialects give `AddColumns`. No CHECK: a boolean needs none.
//! * **The backfill touches only `past_due` rows** (few: a subscription is past due for days
//!   at most, under normal dunning), by one `UPDATE` per table: row locks on those rows, for
//!   one statement. Each `UPDATE` skips rows already filled (`past_due_since IS NULL`), so a
//!   re-run after a crash finishes the job and never overwrites a value applied since.
//!   - A subscription's `past_due_since` is the first stored event showing it `past_due` after
//!     the last one showing another status (from `stripe_events`, which m007 keeps). A
//!     subscription with no such event (written by `stripe-sync`, or by hand) gets the
//!     migration's time: its grace ends [`PAST_DUE_GRACE_DAYS`] after the deploy, neither
//!     locking out a payer in the middle of a retry nor granting more than the grace.
//!   - A user's own `past_due` columns take their subscription's value, else the migration's
//!     time, for the same reason.
//!   - `ends_at_period_end` starts FALSE (the old rule's renewal grace) until the next event
//!     or `stripe-sync` says otherwise.
//! * **The view is replaced lock-timed**, as in m010: PostgreSQL and SQLite drop and create it
//!   in one transaction (their DDL is transactional, readers never see it missing), MySQL
//!   replaces it in place. `down` restores m010's view exactly, then drops the columns (SQLite
//!   cannot drop a column a view still reads, so the view goes back first).
//! * **`users.subscription_status` keeps m006's six values.** `incomplete` and `paused` are
//!   kept as themselves in `stripe_subscriptions.status` (which has no CHECK), and `/v1/billing`
//!   shows them from there. Widening the CHECK on `users` would copy the whole table on SQLite
//!   (it cannot alter a CHECK) and on MariaDB (a named CHECK is `ALGORITHM=COPY`), for two
//!   statuses that grant nothing; the user's columns show them as `none` and `unpaid`.
//!
//! # Backend quirks designed around
//!
//! * **Epoch seconds to a timestamp** differ per backend: `to_timestamp()` on PostgreSQL,
//!   `FROM_UNIXTIME()` on MySQL (in the session's time zone, which is also the one a
//!   `TIMESTAMP` column converts from, so the instant is kept), `datetime(…, 'unixepoch')` on
//!   SQLite (the same text form as its `CURRENT_TIMESTAMP`, which the entities already read).
//! * **Booleans**: PostgreSQL has a boolean type, MySQL a `TINYINT(1)`, SQLite an integer;
//!   `NOT column` means the same on all three.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::dialect::Dialect;
use crate::operation::{AddColumns, NewColumn, Operation, Operations, ViewChange};
use crate::probe::Probe;
use crate::step::{Mode, Step};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Days `past_due` keeps Pro, counted from `past_due_since`. Frozen here (the view cannot read
/// the environment); `entity`'s `GRACE_PERIOD_DAYS` must equal it, which a test checks.
pub const PAST_DUE_GRACE_DAYS: u32 = 7;
/// m010's renewal grace, unchanged.
pub const RENEWAL_GRACE_DAYS: u32 = crate::m010_subscriptions::RENEWAL_GRACE_DAYS;

const VIEW: &str = "user_tiers";
const SUBSCRIPTIONS: &str = "stripe_subscriptions";
const PAST_DUE_SINCE: &str = "past_due_since";
const ENDS_AT_PERIOD_END: &str = "ends_at_period_end";

impl Operations for Migration {
    const REQUIRED_TABLES: &'static [&'static str] =
        &["users", "stripe_events", "stripe_subscriptions"];

    /// `down` is derived: m010's view back, then the columns dropped (the backfill's inverse
    /// is nothing: dropping the columns discards what it wrote).
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![
            Operation::AddColumns(grace_columns(SUBSCRIPTIONS)),
            Operation::AddColumns(grace_columns("users")),
            Operation::Custom {
                up: backfill_past_due_since,
                down: nothing,
            },
            Operation::ReplaceView(ViewChange {
                name: VIEW,
                old: crate::m010_subscriptions::tier_view_sql,
                new: tier_view_sql,
            }),
        ]
    }
}

crate::planned_migration!(Migration, outside_a_transaction);

fn nothing(_dialect: &dyn Dialect) -> Vec<Step> {
    Vec::new()
}

/// `past_due_since` and `ends_at_period_end` on `table`.
fn grace_columns(table: &'static str) -> AddColumns {
    AddColumns {
        table,
        label: Some("grace columns"),
        columns: vec![
            NewColumn {
                name: PAST_DUE_SINCE,
                def: ColumnDef::new(Alias::new(PAST_DUE_SINCE))
                    .timestamp_with_time_zone()
                    .null()
                    .take(),
            },
            NewColumn {
                name: ENDS_AT_PERIOD_END,
                def: ColumnDef::new(Alias::new(ENDS_AT_PERIOD_END))
                    .boolean()
                    .not_null()
                    .default(false)
                    .take(),
            },
        ],
        check: None,
    }
}

/// `seconds` (epoch seconds, an SQL expression) as a timestamp the backend stores.
fn from_epoch(dialect: &dyn Dialect, seconds: &str) -> String {
    match dialect.backend() {
        DbBackend::Postgres => format!("to_timestamp({seconds})"),
        DbBackend::MySql => format!("FROM_UNIXTIME({seconds})"),
        _ => format!("datetime({seconds}, 'unixepoch')"),
    }
}

// Raw SQL: sea-query cannot say a correlated subquery with a fallback inside an UPDATE
// portably.
fn backfill_past_due_since(dialect: &dyn Dialect) -> Vec<Step> {
    let subscriptions = dialect.qualified(SUBSCRIPTIONS);
    let users = dialect.qualified("users");
    let events = dialect.qualified("stripe_events");
    let first_past_due = from_epoch(
        dialect,
        &format!(
            "(SELECT MIN(e.created) FROM {events} e WHERE e.subscription_id = \
             {subscriptions}.subscription_id AND e.status = 'past_due' AND e.created > \
             COALESCE((SELECT MAX(o.created) FROM {events} o WHERE o.subscription_id = \
             {subscriptions}.subscription_id AND o.status IS NOT NULL AND o.status <> \
             'past_due'), -1))"
        ),
    );
    vec![
        Step::new(
            "backfill past_due_since of past_due subscriptions and users",
            Mode::Plain,
            Probe::Never,
        )
        .raw(format!(
            "UPDATE {subscriptions} SET past_due_since = \
             COALESCE({first_past_due}, CURRENT_TIMESTAMP) \
             WHERE status = 'past_due' AND past_due_since IS NULL"
        ))
        .raw(format!(
            "UPDATE {users} SET past_due_since = COALESCE((SELECT s.past_due_since FROM \
             {subscriptions} s WHERE s.subscription_id = {users}.subscription_id AND \
             s.status = 'past_due'), CURRENT_TIMESTAMP) \
             WHERE subscription_status = 'past_due' AND past_due_since IS NULL"
        )),
    ]
}

/// The columns of one subscription as the rule reads them.
struct Columns<'a> {
    status: &'a str,
    period_end: &'a str,
    past_due_since: &'a str,
    ends_at_period_end: &'a str,
}

/// Whether a subscription grants Pro `offset_days` before now: the rule of `entity::tier_for`.
/// `active`/`trialing`: until the period end, plus the renewal grace unless it ends there (no
/// period end: Pro, as before). `past_due`: for the grace from `past_due_since`.
fn grants_pro(dialect: &dyn Dialect, c: &Columns<'_>, offset_days: u32) -> String {
    format!(
        "(({status} IN ('active', 'trialing') AND ({end} IS NULL \
         OR (NOT {ends} AND {renewal}) OR ({ends} AND {until_end}))) \
         OR ({status} = 'past_due' AND {since} IS NOT NULL AND {grace}))",
        status = c.status,
        end = c.period_end,
        ends = c.ends_at_period_end,
        since = c.past_due_since,
        renewal = dialect.later_than_now(c.period_end, RENEWAL_GRACE_DAYS + offset_days),
        until_end = dialect.later_than_now(c.period_end, offset_days),
        grace = dialect.later_than_now(c.past_due_since, PAST_DUE_GRACE_DAYS + offset_days),
    )
}

/// Pro when the user's own columns or any subscription of a customer linked to them (and not
/// deleted) grants Pro `offset_days` before now.
fn pro_over_subscriptions(dialect: &dyn Dialect, offset_days: u32) -> String {
    let own = Columns {
        status: "u.subscription_status",
        period_end: "u.current_period_end",
        past_due_since: "u.past_due_since",
        ends_at_period_end: "u.ends_at_period_end",
    };
    let theirs = Columns {
        status: "s.status",
        period_end: "s.current_period_end",
        past_due_since: "s.past_due_since",
        ends_at_period_end: "s.ends_at_period_end",
    };
    format!(
        "CASE WHEN {own} OR EXISTS (SELECT 1 FROM {customers} c \
         JOIN {subscriptions} s ON s.customer_id = c.customer_id \
         WHERE c.user_id = u.id AND c.deleted_at IS NULL AND {theirs}) \
         THEN 'pro' ELSE 'free' END",
        own = grants_pro(dialect, &own, offset_days),
        theirs = grants_pro(dialect, &theirs, offset_days),
        customers = dialect.qualified("stripe_customers"),
        subscriptions = dialect.qualified(SUBSCRIPTIONS),
    )
}

/// `user_tiers(user_id, tier, retention_tier)`, as m010 defines the columns: `retention_tier`
/// is the tier as it stood RENEWAL_GRACE_DAYS ago (a grant only ever ends as time passes).
pub(crate) fn tier_view_sql(dialect: &dyn Dialect) -> String {
    format!(
        "{create} {view} AS SELECT u.id AS user_id, {tier} AS tier, {retention} AS retention_tier \
         FROM {users} u",
        create = dialect.replacing_view_keyword(),
        view = dialect.qualified(VIEW),
        tier = pro_over_subscriptions(dialect, 0),
        retention = pro_over_subscriptions(dialect, RENEWAL_GRACE_DAYS),
        users = dialect.qualified("users"),
    )
}
