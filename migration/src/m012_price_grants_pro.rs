//! What grants Pro: `price_grants_pro` on `stripe_subscriptions` and on `users`, and a
//! `user_tiers` view that reads it.
//!
//! The server may be given an allow-list of Stripe prices and products (`PRO_PRICE_IDS`):
//! only a subscription with an item on the list grants Pro. The view cannot read the
//! environment, so each stored snapshot records whether its items matched the list when it
//! was written (the webhook and `stripe-sync` compute it), and the view reads that:
//! `active`, `trialing` and `past_due` grant Pro only when `price_grants_pro` is true. The
//! rest of m011's rule is unchanged. The user's own columns get the flag too: they are a copy
//! of the subscription that decides (or were set by hand), and the view counts them as one
//! more subscription.
//!
//! # Why each step is shaped as it is
//!
//! * **No wrapping transaction** (`use_transaction() -> Some(false)`), as in m006, m010 and
//!   m011: each step commits on its own, so no lock is held across steps.
//! * **`NOT NULL DEFAULT TRUE`, and no backfill.** TRUE is the rule without a list (any
//!   subscription grants Pro), so every existing row keeps the tier it had, and a deployment
//!   that never sets the list never writes anything else. With a list set, rows keep TRUE
//!   until the next event for their subscription or the next `stripe-sync` rewrites them
//!   (docs/stripe.md: change the list, restart, then run `stripe-sync`). A backfill could not
//!   do better: the items are not stored, only Stripe has them.
//! * **The column adds are metadata-only and lock-timed.** A boolean with a constant default:
//!   PostgreSQL 11+ keeps the default in the catalog (no table rewrite; ACCESS EXCLUSIVE for
//!   an instant), MariaDB 10.3+ adds it `ALGORITHM=INSTANT` (a metadata change; the rows are
//!   not touched, the default is filled in as they are read), and SQLite's `ADD COLUMN` only
//!   edits the schema text (a constant default is allowed with `NOT NULL`; old rows read it
//!   from the schema). The ACCESS EXCLUSIVE (PostgreSQL) or metadata lock (MariaDB) is still
//!   queued behind any long transaction on the table, hence the lock timeout and retries with
//!   backoff that the dialects give `AddColumns`. No CHECK: a boolean needs none.
//! * **The view is replaced lock-timed**, as in m010 and m011: PostgreSQL and SQLite drop and
//!   create it in one transaction (their DDL is transactional, readers never see it missing),
//!   MariaDB replaces it in place. `down` restores m011's view exactly, then drops the columns
//!   (SQLite cannot drop a column a view still reads, so the view goes back first).
//!
//! # Backend quirks designed around
//!
//! * **Booleans**: PostgreSQL has a boolean type, MariaDB a `TINYINT(1)`, SQLite an integer;
//!   a bare `column` as a condition means the same on all three (true is 1 on the last two).

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::operation::{AddColumns, NewColumn, Operation, Operations, ViewChange};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// m011's graces, unchanged.
pub const PAST_DUE_GRACE_DAYS: u32 = crate::m011_past_due_since::PAST_DUE_GRACE_DAYS;
pub const RENEWAL_GRACE_DAYS: u32 = crate::m011_past_due_since::RENEWAL_GRACE_DAYS;

const VIEW: &str = "user_tiers";
const SUBSCRIPTIONS: &str = "stripe_subscriptions";
const PRICE_GRANTS_PRO: &str = "price_grants_pro";

impl Operations for Migration {
    const REQUIRED_TABLES: &'static [&'static str] =
        &["users", "stripe_customers", "stripe_subscriptions"];

    /// `down` is derived: m011's view back, then the columns dropped.
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![
            Operation::AddColumns(price_column(SUBSCRIPTIONS)),
            Operation::AddColumns(price_column("users")),
            Operation::ReplaceView(ViewChange {
                name: VIEW,
                old: crate::m011_past_due_since::tier_view_sql,
                new: tier_view_sql,
            }),
        ]
    }
}

crate::planned_migration!(Migration, outside_a_transaction);

/// `price_grants_pro` on `table`.
fn price_column(table: &'static str) -> AddColumns {
    AddColumns {
        table,
        label: None,
        columns: vec![NewColumn {
            name: PRICE_GRANTS_PRO,
            def: ColumnDef::new(Alias::new(PRICE_GRANTS_PRO))
                .boolean()
                .not_null()
                .default(true)
                .take(),
        }],
        check: None,
    }
}

/// The columns of one subscription as the rule reads them.
struct Columns<'a> {
    status: &'a str,
    period_end: &'a str,
    past_due_since: &'a str,
    ends_at_period_end: &'a str,
    price_grants_pro: &'a str,
}

/// Whether a subscription grants Pro `offset_days` before now: the rule of `entity::tier_for`.
/// m011's rule, for a subscription whose items matched the list (or with no list).
fn grants_pro(dialect: &dyn Dialect, c: &Columns<'_>, offset_days: u32) -> String {
    format!(
        "({price} AND (({status} IN ('active', 'trialing') AND ({end} IS NULL \
         OR (NOT {ends} AND {renewal}) OR ({ends} AND {until_end}))) \
         OR ({status} = 'past_due' AND {since} IS NOT NULL AND {grace})))",
        price = c.price_grants_pro,
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
        price_grants_pro: "u.price_grants_pro",
    };
    let theirs = Columns {
        status: "s.status",
        period_end: "s.current_period_end",
        past_due_since: "s.past_due_since",
        ends_at_period_end: "s.ends_at_period_end",
        price_grants_pro: "s.price_grants_pro",
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
