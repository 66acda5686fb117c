//! `stripe_customers` and `stripe_subscriptions`: billing state per subscription, and every
//! customer a user has had; `user_tiers` reads them at query time.
//!
//! Until now the user's billing columns were the newest snapshot among all of the customer's
//! events, whichever subscription it described, and a second checkout re-pointed the user to
//! the new customer, orphaning the old one. Now:
//!
//! * `stripe_customers(customer_id, user_id, deleted_at)`: every customer we have heard of, and
//!   the user it is linked to (never two users: the customer is the primary key). A user keeps
//!   every customer they ever checked out with. The row is also the lock every delivery for that
//!   customer takes first, so deliveries for one customer serialize.
//! * `stripe_subscriptions`: the latest snapshot of each subscription and its ordering key
//!   `(created, lifecycle_rank, current_period_end)`.
//! * `user_tiers` gains `retention_tier` and computes both over all of the user's
//!   subscriptions at read time (periods end without events, so the winner can change with the
//!   clock alone). `active`/`trialing` now keep Pro for [`RENEWAL_GRACE_DAYS`] after the period
//!   end, because Stripe's renewal event can arrive late.
//!
//! # Why each step is shaped as it is
//!
//! * **No wrapping transaction** (`use_transaction() -> Some(false)`), as in m006: each step
//!   commits on its own, so no lock is held across steps.
//! * **`stripe_customers` references `users`.** On PostgreSQL a new foreign key takes SHARE ROW
//!   EXCLUSIVE on `users` (writers wait for the catalog update, readers do not), on MySQL a
//!   metadata lock: the `CREATE TABLE` therefore runs lock-timed, retried with backoff when a
//!   long transaction holds `users`. `stripe_subscriptions` has no foreign key (snapshots may
//!   name customers no user has yet), so its creation touches no table in use.
//! * **Indexes are built with their tables**, not `CONCURRENTLY`: the tables are new and empty
//!   and nothing reads them until this migration has finished, so the build takes a lock no
//!   one else wants, for an instant. (PostgreSQL's `CONCURRENTLY` on an empty table would only
//!   add two waits for every running transaction.)
//! * **The backfill runs while the API writes `users`, so no statement of it may hold a lock
//!   a request waits for** ([`Mode::Backfill`]). Its first shape, one `INSERT ... SELECT` per
//!   source, did: the insert into `stripe_customers` checks its foreign key, which locks
//!   every referenced `users` row until the statement ends (`FOR KEY SHARE` on PostgreSQL, a
//!   shared record lock on InnoDB), and MySQL's `INSERT ... SELECT` at `REPEATABLE READ`
//!   also took shared next-key locks on every row it read, gaps included. At 1M users the
//!   statement lasted seconds, longer than the API's 2 s lock wait: session syncs (`FOR
//!   UPDATE` on the user) and, on MariaDB, inserts of new users failed. Now:
//!   - every statement runs in a `READ COMMITTED` transaction of its own, where InnoDB reads
//!     the source without locking it (PostgreSQL never locks what it reads);
//!   - the one statement with a foreign key, the linked customers, runs once per range of
//!     [`USERS_PER_RANGE`] `users.id` values, so it locks at most that many users, for
//!     milliseconds (a request waits at most one range; the migrator's lock is verified
//!     between ranges);
//!   - the API locks its user row `FOR NO KEY UPDATE` on PostgreSQL, which a foreign key's
//!     `FOR KEY SHARE` does not conflict with at all (an older API still running during a
//!     rolling deploy locks `FOR UPDATE` and waits at most one range).
//!
//!   The other statements insert rows with no foreign key (customers named only by events,
//!   `user_id` NULL) or into `stripe_subscriptions`, which has none, so they lock nothing a
//!   request uses. They run by ranges too, for another reason: as single statements at 1M
//!   users / 500k events, the window function over every event sorted on disk for 3 s and
//!   the statements wrote a few hundred MB of WAL in one go; one API `COMMIT` in three runs
//!   waited 145 ms for its WAL flush behind them (no lock wait was logged). By ranges of
//!   [`EVENTS_PER_RANGE`] events (`stripe_events.customer_id`, which its index leads with;
//!   a subscription's events all name its one customer) each statement sorts in memory and
//!   each commit flushes little. Every insert skips rows already present (`NOT EXISTS`), so
//!   a re-run after a crash finishes the job and never overwrites a snapshot applied since.
//!   On MySQL with binary logging in `STATEMENT` format, `READ COMMITTED` writes are refused
//!   (error 1665): use `MIXED` (MariaDB's default) or `ROW`.
//!
//!   This changed m010's plan twice after databases had applied it (first only the linked
//!   customers by ranges, then every statement). Every plan builds the same tables and
//!   copies the same rows, so the sums of the earlier plans are listed as
//!   [`Operations::EARLIER_CHECKSUMS`]: a database that recorded one is taken as having
//!   applied this plan, and its sum is updated on the next `up`, without `accept-checksum`.
//!
//!   What is copied:
//!   - Customers: every `users.stripe_customer_id` (linked), then every customer named by an
//!     event (unlinked), then `deleted_at` for those Stripe has deleted.
//!   - Subscriptions: the latest snapshot of each subscription among the stored events (the
//!     same key the application uses, by a window function: PostgreSQL, MariaDB 10.2+, MySQL
//!     8 and SQLite 3.25+ have `ROW_NUMBER()`), then a user's current subscription that no
//!     event describes (set by hand, say), with key `created = 0` so any event wins over it.
//! * **The view is replaced lock-timed.** Replacing a view takes ACCESS EXCLUSIVE on it
//!   (PostgreSQL) or a metadata lock (MySQL), so queued readers would wait behind us.
//!   On PostgreSQL and SQLite both directions drop and create the view in one transaction
//!   (their DDL is transactional, so readers never see it missing): PostgreSQL's `CREATE OR
//!   REPLACE VIEW` cannot remove columns, which `down` needs, and SQLite has no `OR REPLACE`.
//!   MySQL replaces it in place.
//!
//! # Backend quirks designed around
//!
//! * **MySQL compares strings case-insensitively by default**; Stripe ids are case-sensitive,
//!   so both tables compare bytes (`utf8mb4_bin`), as `stripe_events` does.
//! * **SQLite** stores timestamps as RFC 3339 text; the view compares them with `julianday()`.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::idents::Users;
use crate::operation::{NewTableIndex, Operation, Operations, TableSpec, ViewChange};
use crate::probe::Probe;
use crate::step::{KeyKind, KeyRanges, Mode, RANGE_END, RANGE_START, Step};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Days `active`/`trialing` keep Pro after `current_period_end`, waiting for the renewal.
/// Frozen here (the view cannot read the environment); `entity`'s `RENEWAL_GRACE_DAYS` must
/// equal it, which a test checks.
pub const RENEWAL_GRACE_DAYS: u32 = 3;
/// m006's grace for `past_due`, frozen as m006 wrote it.
const PAST_DUE_GRACE_DAYS: u32 = 7;

const VIEW: &str = "user_tiers";
const CUSTOMERS: &str = "stripe_customers";
const SUBSCRIPTIONS: &str = "stripe_subscriptions";
const CUSTOMERS_BY_USER: &str = "idx_stripe_customers_user";
const SUBSCRIPTIONS_BY_CUSTOMER: &str = "idx_stripe_subscriptions_customer";

#[derive(DeriveIden, Clone, Copy)]
enum StripeCustomers {
    CustomerId,
    UserId,
    DeletedAt,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum StripeSubscriptions {
    SubscriptionId,
    CustomerId,
    Status,
    CurrentPeriodEnd,
    Created,
    LifecycleRank,
    UpdatedAt,
}

impl Operations for Migration {
    const REQUIRED_TABLES: &'static [&'static str] = &["users", "stripe_events"];
    /// The earlier plans' sums (PostgreSQL, MySQL, SQLite each): one `INSERT ... SELECT` per
    /// source; then the linked customers alone by ranges of `users.id`.
    const EARLIER_CHECKSUMS: &'static [&'static str] = &[
        "fcbcf11de45bb6998e1409b3fda00ac7affb6a1ebbb558db63e52acdb002267d",
        "52d083ff09b798bccf756b53cbdb00527cc4c48bc46795c206f2af2ef6452a2e",
        "4f5f9a7b2e04f18e37bbd6b01983fe0ece25f67ac8c6496aed5804761940f92a",
        "3d873973a64177a4ff9c731eda647cae2d205688dd9336b992d06e312a211d34",
        "5275d321dda25b2233fb2fcee807176cbb30933f6386213d4b52a1420c0d923b",
        "fb6d13cb10d7917e3c0fbd6b2b9fd44bf506910f70e977cef8629a33045d4ff5",
    ];

    /// `down` is derived: m006's view back, then the tables dropped (the backfills' inverse is
    /// nothing: dropping the tables discards what they copied).
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![
            Operation::CreateTable(CUSTOMERS_TABLE),
            Operation::CreateTable(SUBSCRIPTIONS_TABLE),
            Operation::Custom {
                up: backfill_customers,
                down: nothing,
            },
            Operation::Custom {
                up: backfill_subscriptions,
                down: nothing,
            },
            Operation::ReplaceView(ViewChange {
                name: VIEW,
                old: crate::m006_billing_fields::tier_view_sql,
                new: tier_view_sql,
            }),
        ]
    }
}

crate::planned_migration!(Migration, outside_a_transaction);

const CUSTOMERS_TABLE: TableSpec = TableSpec {
    name: CUSTOMERS,
    note: Some("foreign key to users"),
    // Creating the foreign key locks `users`, which serves traffic.
    mode: Mode::LockTimed,
    drop_if_exists: true,
    create: create_customers,
    indexes: &[NewTableIndex {
        name: CUSTOMERS_BY_USER,
        summary: "index stripe_customers by user",
        columns: &["user_id"],
        unique: false,
    }],
};

const SUBSCRIPTIONS_TABLE: TableSpec = TableSpec {
    name: SUBSCRIPTIONS,
    note: None,
    mode: Mode::Plain,
    drop_if_exists: true,
    create: create_subscriptions,
    indexes: &[NewTableIndex {
        name: SUBSCRIPTIONS_BY_CUSTOMER,
        summary: "index stripe_subscriptions by customer",
        columns: &["customer_id"],
        unique: false,
    }],
};

fn nothing(_dialect: &dyn Dialect) -> Vec<Step> {
    Vec::new()
}

/// Its text columns compare bytes on MySQL (see the module comment).
fn create_customers(dialect: &dyn Dialect) -> TableCreateStatement {
    dialect
        .case_sensitive_table(CUSTOMERS)
        .col(
            ColumnDef::new(StripeCustomers::CustomerId)
                .string_len(255)
                .not_null()
                .primary_key(),
        )
        // NULL until checkout links the customer to one of our users.
        .col(ColumnDef::new(StripeCustomers::UserId).big_integer().null())
        // Stripe deleted the customer: its subscriptions no longer count, and it is never
        // linked again.
        .col(
            ColumnDef::new(StripeCustomers::DeletedAt)
                .timestamp_with_time_zone()
                .null(),
        )
        .col(crate::created_at(StripeCustomers::CreatedAt))
        .foreign_key(
            ForeignKey::create()
                .name("fk_stripe_customers_user")
                .from(dialect.table(CUSTOMERS), StripeCustomers::UserId)
                .to(dialect.table("users"), Users::Id)
                .on_delete(ForeignKeyAction::Cascade),
        )
        .take()
}

/// Its text columns compare bytes on MySQL (see the module comment).
fn create_subscriptions(dialect: &dyn Dialect) -> TableCreateStatement {
    dialect
        .case_sensitive_table(SUBSCRIPTIONS)
        .col(
            ColumnDef::new(StripeSubscriptions::SubscriptionId)
                .string_len(255)
                .not_null()
                .primary_key(),
        )
        .col(
            ColumnDef::new(StripeSubscriptions::CustomerId)
                .string_len(255)
                .not_null(),
        )
        .col(
            ColumnDef::new(StripeSubscriptions::Status)
                .string_len(50)
                .not_null(),
        )
        .col(
            ColumnDef::new(StripeSubscriptions::CurrentPeriodEnd)
                .timestamp_with_time_zone()
                .null(),
        )
        // The ordering key of the snapshot kept: Stripe's `created` (seconds), then the
        // lifecycle rank of its status, then the period end.
        .col(
            ColumnDef::new(StripeSubscriptions::Created)
                .big_integer()
                .not_null(),
        )
        .col(
            ColumnDef::new(StripeSubscriptions::LifecycleRank)
                .small_integer()
                .not_null(),
        )
        .col(crate::created_at(StripeSubscriptions::UpdatedAt))
        .take()
}

/// Users per range of the linked-customer backfill: each range's statement holds the foreign
/// key's lock on at most this many `users` rows, for a few milliseconds.
const USERS_PER_RANGE: i64 = 1000;

/// Events per range of the backfills that read `stripe_events` (by `customer_id`, which its
/// index leads with): no foreign key is checked there, so the size only bounds each
/// statement's sort and the WAL each commit flushes.
const EVENTS_PER_RANGE: i64 = 5000;

/// `users.id` ranges.
const USER_RANGES: KeyRanges = KeyRanges {
    table: "users",
    key: "id",
    kind: KeyKind::Integer,
    rows: USERS_PER_RANGE,
};

/// `stripe_events.customer_id` ranges: a range holds every event of its customers, and a
/// subscription's events all name its one customer (Stripe never moves a subscription to
/// another customer), so a range sees every snapshot of its subscriptions.
const EVENT_RANGES: KeyRanges = KeyRanges {
    table: "stripe_events",
    key: "customer_id",
    kind: KeyKind::Text,
    rows: EVENTS_PER_RANGE,
};

/// The events of the current range.
fn in_event_range(alias: &str) -> String {
    format!("{alias}.customer_id BETWEEN {RANGE_START} AND {RANGE_END}")
}

// Raw SQL: sea-query cannot say INSERT ... SELECT ... WHERE NOT EXISTS over a window
// function portably, nor the range placeholders of a backfill.
fn backfill_customers(dialect: &dyn Dialect) -> Vec<Step> {
    let customers = dialect.qualified(CUSTOMERS);
    let events = dialect.qualified("stripe_events");
    vec![
        Step::new(
            "backfill stripe_customers from users, by ranges of users.id",
            Mode::Backfill {
                ranges: Some(USER_RANGES),
            },
            Probe::Never,
        )
        .raw(format!(
            "INSERT INTO {customers} (customer_id, user_id) \
             SELECT u.stripe_customer_id, u.id FROM {users} u \
             WHERE u.id BETWEEN {RANGE_START} AND {RANGE_END} \
             AND u.stripe_customer_id IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM {customers} c WHERE c.customer_id = u.stripe_customer_id)",
            users = dialect.qualified("users"),
        )),
        Step::new(
            "backfill stripe_customers from stripe_events, by ranges of its customer_id",
            Mode::Backfill {
                ranges: Some(EVENT_RANGES),
            },
            Probe::Never,
        )
        .raw(format!(
            "INSERT INTO {customers} (customer_id) \
             SELECT DISTINCT e.customer_id FROM {events} e \
             WHERE {range} AND NOT EXISTS \
             (SELECT 1 FROM {customers} c WHERE c.customer_id = e.customer_id)",
            range = in_event_range("e"),
        ))
        .raw(format!(
            "UPDATE {customers} SET deleted_at = CURRENT_TIMESTAMP \
             WHERE deleted_at IS NULL AND customer_id BETWEEN {RANGE_START} AND {RANGE_END} \
             AND customer_id IN (SELECT e.customer_id FROM {events} e \
             WHERE {range} AND e.event_type = 'customer.deleted')",
            range = in_event_range("e"),
        )),
    ]
}

fn backfill_subscriptions(dialect: &dyn Dialect) -> Vec<Step> {
    vec![
        Step::new(
            "backfill stripe_subscriptions from stripe_events, by ranges of its customer_id",
            Mode::Backfill {
                ranges: Some(EVENT_RANGES),
            },
            Probe::Never,
        )
        .raw(latest_snapshots_sql(dialect)),
        Step::new(
            "backfill stripe_subscriptions from users, by ranges of users.id",
            Mode::Backfill {
                ranges: Some(USER_RANGES),
            },
            Probe::Never,
        )
        .raw(format!(
            "INSERT INTO {subscriptions} \
             (subscription_id, customer_id, status, current_period_end, created, lifecycle_rank) \
             SELECT u.subscription_id, u.stripe_customer_id, u.subscription_status, \
             u.current_period_end, 0, {rank} FROM {users} u \
             WHERE u.id BETWEEN {RANGE_START} AND {RANGE_END} \
             AND u.subscription_id IS NOT NULL AND u.stripe_customer_id IS NOT NULL \
             AND u.subscription_status <> 'none' AND NOT EXISTS \
             (SELECT 1 FROM {subscriptions} s WHERE s.subscription_id = u.subscription_id)",
            rank = rank_sql("u.subscription_status"),
            subscriptions = dialect.qualified(SUBSCRIPTIONS),
            users = dialect.qualified("users"),
        )),
    ]
}

/// `lifecycle_rank` of the application (`api::stripe::event::lifecycle_rank`), in SQL.
fn rank_sql(status: &str) -> String {
    format!(
        "CASE {status} WHEN 'trialing' THEN 1 WHEN 'active' THEN 2 WHEN 'past_due' THEN 3 \
         WHEN 'unpaid' THEN 4 WHEN 'canceled' THEN 5 ELSE 0 END"
    )
}

/// Each subscription's greatest `(created, rank, period end, event id)` among the stored
/// events. A missing period end orders below any instant, as `None < Some` does in Rust.
fn latest_snapshots_sql(dialect: &dyn Dialect) -> String {
    let rank = rank_sql("e.status");
    format!(
        "INSERT INTO {subscriptions} \
         (subscription_id, customer_id, status, current_period_end, created, lifecycle_rank) \
         SELECT l.subscription_id, l.customer_id, l.status, l.current_period_end, l.created, \
         l.lifecycle_rank FROM (SELECT e.subscription_id, e.customer_id, e.status, \
         e.current_period_end, e.created, {rank} AS lifecycle_rank, \
         ROW_NUMBER() OVER (PARTITION BY e.subscription_id ORDER BY e.created DESC, {rank} DESC, \
         CASE WHEN e.current_period_end IS NULL THEN 0 ELSE 1 END DESC, \
         e.current_period_end DESC, e.id DESC) AS pick \
         FROM {events} e WHERE {range} AND e.subscription_id IS NOT NULL \
         AND e.status IS NOT NULL) l \
         WHERE l.pick = 1 AND NOT EXISTS \
         (SELECT 1 FROM {subscriptions} s WHERE s.subscription_id = l.subscription_id)",
        subscriptions = dialect.qualified(SUBSCRIPTIONS),
        events = dialect.qualified("stripe_events"),
        range = in_event_range("e"),
    )
}

/// Whether a subscription in `status` with period end `end` grants Pro `offset_days` before
/// now. The rule of `entity::tier_for`.
fn grants_pro(dialect: &dyn Dialect, status: &str, end: &str, offset_days: u32) -> String {
    format!(
        "(({status} IN ('active', 'trialing') AND ({end} IS NULL OR {renewal})) \
         OR ({status} = 'past_due' AND {end} IS NOT NULL AND {past_due}))",
        renewal = dialect.later_than_now(end, RENEWAL_GRACE_DAYS + offset_days),
        past_due = dialect.later_than_now(end, PAST_DUE_GRACE_DAYS + offset_days),
    )
}

/// Pro when the user's own columns or any subscription of a customer linked to them (and not
/// deleted) grants Pro `offset_days` before now.
fn pro_over_subscriptions(dialect: &dyn Dialect, offset_days: u32) -> String {
    format!(
        "CASE WHEN {own} OR EXISTS (SELECT 1 FROM {customers} c \
         JOIN {subscriptions} s ON s.customer_id = c.customer_id \
         WHERE c.user_id = u.id AND c.deleted_at IS NULL AND {theirs}) \
         THEN 'pro' ELSE 'free' END",
        own = grants_pro(
            dialect,
            "u.subscription_status",
            "u.current_period_end",
            offset_days
        ),
        theirs = grants_pro(dialect, "s.status", "s.current_period_end", offset_days),
        customers = dialect.qualified(CUSTOMERS),
        subscriptions = dialect.qualified(SUBSCRIPTIONS),
    )
}

/// `user_tiers(user_id, tier, retention_tier)`: `tier` is the tier now; `retention_tier` is
/// Pro when the user held Pro at any moment of the last RENEWAL_GRACE_DAYS (a grant only ever
/// ends, so that is the tier as it stood then), which the purge applies so that a renewal
/// later than the grace still finds the trash as Pro keeps it.
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
