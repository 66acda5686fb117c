//! Billing fields on `users`, soft delete on `synced_sessions`, and the `user_tiers` view.
//!
//! Adds `users.stripe_customer_id` (unique), `subscription_id`, `subscription_status`
//! (NOT NULL DEFAULT 'none', constrained to the six statuses Stripe sync uses by a CHECK:
//! `chk_subscription_status`, or on MariaDB a column-level one named `subscription_status`),
//! `current_period_end`; `synced_sessions.deleted_at` with
//! `idx_sessions_deleted_at` for the retention job; and `user_tiers`, the tier rule in SQL.
//!
//! # Why each step is shaped as it is
//!
//! This runs against databases that serve traffic, so it never takes a heavy lock on two
//! tables at once and never holds one for longer than a catalog update:
//!
//! * **No wrapping transaction** (`use_transaction() -> Some(false)`). The card's SQL in one
//!   transaction holds ACCESS EXCLUSIVE on `users` while it waits for `synced_sessions`, and a
//!   writer holding `synced_sessions` waits on `users` for its foreign-key check: a deadlock,
//!   measured 3 of 3 times under load. Each step here commits on its own.
//! * **Lock-timed steps.** Steps that need ACCESS EXCLUSIVE (PostgreSQL) or an exclusive
//!   metadata lock (MySQL) run in a short transaction of their own with `lock_timeout` set on
//!   that same transaction, so a long-running query ahead of us makes us give up and retry with
//!   jittered backoff instead of queueing every reader and writer behind us.
//! * **Column adds are metadata-only.** PostgreSQL 11+ stores a constant default in the
//!   catalog, so `NOT NULL DEFAULT 'none'` does not rewrite the table. MySQL/MariaDB use
//!   `ALGORITHM=INSTANT`, which fails loudly rather than falling back to a table copy.
//! * **The CHECK constraint on PostgreSQL** is added `NOT VALID` in the same transaction as the
//!   columns (no scan under ACCESS EXCLUSIVE), then validated in a transaction of its own, which
//!   takes only SHARE UPDATE EXCLUSIVE: reads and writes go on while it scans. sea-query cannot
//!   write `NOT VALID` or `VALIDATE CONSTRAINT`, hence raw SQL there.
//! * **Indexes are built `CONCURRENTLY`** on PostgreSQL (no write lock while 5M rows are read),
//!   which cannot run inside a transaction: the other reason for `Some(false)`. An interrupted
//!   concurrent build leaves an INVALID index; its probe only counts valid indexes, and a step
//!   before it drops the leftover (`DROP INDEX CONCURRENTLY IF EXISTS "schema"."name"`), once its
//!   probe has checked that an index of that name is invalid and on the expected table in the
//!   migrations' schema. On MySQL
//!   `ALGORITHM=INPLACE, LOCK=NONE` keeps writes flowing during the build.
//! * **One index on `stripe_customer_id`**: the unique index serves the lookups. The card's
//!   inline `UNIQUE` plus a plain index would maintain two identical b-trees on every write.
//! * **`idx_sessions_deleted_at` is partial** (`WHERE deleted_at IS NOT NULL`) on PostgreSQL
//!   and SQLite: live sessions, the vast majority, cost it nothing. MySQL has no partial
//!   indexes, so there it is a plain index.
//! * **`user_tiers` is a view**, not a generated column: a STORED column would rewrite `users`
//!   on PostgreSQL, and the rule depends on the current time, which generated columns may not
//!   read. sea-query has no view builder, hence raw SQL per backend. Grace period: 7 days.
//!
//! # squawk findings left on purpose
//!
//! CI lints this migration's PostgreSQL SQL (`migration sql --backend postgres`) with squawk.
//! Two rules are excluded, for these reasons:
//! * `prefer-text-field`: the unit card fixes `VARCHAR(255)`/`VARCHAR(50)`. The column sizes are
//!   never changed later, so the rule's concern (resizing takes ACCESS EXCLUSIVE) does not arise.
//! * `require-statement-timeout`: a statement timeout would abort the steps that legitimately
//!   scan the tables (VALIDATE CONSTRAINT, the concurrent index builds), which take no lock
//!   that blocks traffic. What could block traffic is waiting for a lock, and every such wait is
//!   bounded by `lock_timeout` on the same transaction.
//!
//! # Backend quirks designed around
//!
//! * **MySQL/MariaDB DDL is not transactional**, so a failure half-way leaves half a migration.
//!   Every step probes the catalog first and is skipped when already done, so `up` (and `down`)
//!   can simply be run again. The same holds after a crash on any backend.
//! * **MariaDB copies the table to add a CHECK of its own** (`ALGORITHM=COPY`; INSTANT and
//!   INPLACE are refused), but accepts an unnamed column-level CHECK inside `ADD COLUMN` with
//!   `ALGORITHM=INSTANT` (it rejects a named one there). That is safe because the column is new
//!   and every existing row holds the default; measured 0.085 s on 1M rows, against 2.26 s of
//!   blocked writes for the copy. MariaDB names the CHECK after its column
//!   (`subscription_status`). Databases migrated by the older m006, which added
//!   `chk_subscription_status` by a copy, stay done: the probe accepts either name. Its copy
//!   step is kept for one case only: that older m006 interrupted between its columns and its
//!   CHECK. `down` drops `chk_subscription_status` where it exists; dropping the column drops
//!   the column-level CHECK with it.
//! * **MySQL counts `lock_wait_timeout` in whole seconds**, so one second is the floor there.
//! * **SQLite** takes one alteration per `ALTER TABLE`, cannot add a column with `UNIQUE` (the
//!   unique index does that job), carries the named CHECK inside `ADD COLUMN`, and cannot drop a
//!   column that an index or view still uses, so `down` drops those first.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::operation::{
    AddColumns, IndexSpec, NewColumn, Operation, Operations, ValueCheck, ViewSpec,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The statuses `chk_subscription_status` admits. Frozen here: a migration never reads the
/// entity crate, whose `SubscriptionStatus` must match (a test checks both ways).
pub const SUBSCRIPTION_STATUSES: [&str; 6] = [
    "none", "trialing", "active", "past_due", "canceled", "unpaid",
];
pub const STATUS_CHECK: &str = "chk_subscription_status";
/// The name MariaDB gives the column-level CHECK that m006 writes there: its column's.
pub const MARIADB_INLINE_STATUS_CHECK: &str = "subscription_status";
pub const CUSTOMER_INDEX: &str = "idx_users_stripe_customer";
pub const DELETED_AT_INDEX: &str = "idx_sessions_deleted_at";
pub const TIER_VIEW: &str = "user_tiers";
/// Days `past_due` keeps Pro after `current_period_end`.
pub const GRACE_DAYS: u32 = 7;

impl Operations for Migration {
    const REQUIRED_TABLES: &'static [&'static str] = &["users", "synced_sessions"];

    /// `down` is derived: the inverses in reverse order.
    fn up(&self, dialect: &dyn Dialect) -> Vec<Operation> {
        let billing = billing_columns(dialect);
        vec![
            Operation::AddColumns(billing.clone()),
            Operation::RepairCheck(billing),
            Operation::CreateIndex(IndexSpec {
                name: CUSTOMER_INDEX,
                table: "users",
                columns: &["stripe_customer_id"],
                unique: true,
                partial_not_null: None,
            }),
            Operation::AddColumns(AddColumns {
                table: "synced_sessions",
                label: None,
                columns: vec![NewColumn {
                    name: "deleted_at",
                    def: ColumnDef::new(Alias::new("deleted_at"))
                        .timestamp_with_time_zone()
                        .null()
                        .take(),
                }],
                check: None,
            }),
            // Live sessions, the vast majority, cost a partial index nothing.
            Operation::CreateIndex(IndexSpec {
                name: DELETED_AT_INDEX,
                table: "synced_sessions",
                columns: &["deleted_at"],
                unique: false,
                partial_not_null: Some("deleted_at"),
            }),
            Operation::CreateView(TIERS),
        ]
    }
}

crate::planned_migration!(Migration, outside_a_transaction);

/// The four billing columns on `users`, with the status CHECK. Stripe ids are case-sensitive,
/// so they compare as bytes (on MySQL `cus_AbC` and `cus_abc` would collide in the unique
/// index).
fn billing_columns(dialect: &dyn Dialect) -> AddColumns {
    AddColumns {
        table: "users",
        label: Some("billing columns"),
        columns: vec![
            NewColumn {
                name: "stripe_customer_id",
                def: dialect.case_sensitive_string("stripe_customer_id", 255),
            },
            NewColumn {
                name: "subscription_id",
                def: dialect.case_sensitive_string("subscription_id", 255),
            },
            NewColumn {
                name: "subscription_status",
                def: ColumnDef::new(Alias::new("subscription_status"))
                    .string_len(50)
                    .not_null()
                    .default("none")
                    .take(),
            },
            NewColumn {
                name: "current_period_end",
                def: ColumnDef::new(Alias::new("current_period_end"))
                    .timestamp_with_time_zone()
                    .null()
                    .take(),
            },
        ],
        check: Some(ValueCheck {
            name: STATUS_CHECK,
            column: "subscription_status",
            values: &SUBSCRIPTION_STATUSES,
        }),
    }
}

const TIERS: ViewSpec = ViewSpec {
    name: TIER_VIEW,
    body: tier_view_body,
};

/// `user_tiers(user_id, tier)`: the tier rule in SQL, the twin of `entity`'s `tier_at`.
///
/// Pro while `active`/`trialing` and the period has not ended (or has no end); Pro while
/// `past_due` and less than GRACE_DAYS past the period end; Free otherwise.
fn tier_view_body(dialect: &dyn Dialect) -> String {
    format!(
        "SELECT id AS user_id, CASE \
         WHEN subscription_status IN ('active', 'trialing') \
         AND (current_period_end IS NULL OR {not_ended}) THEN 'pro' \
         WHEN subscription_status = 'past_due' AND current_period_end IS NOT NULL \
         AND {in_grace} THEN 'pro' \
         ELSE 'free' END AS tier FROM {users}",
        not_ended = dialect.later_than_now("current_period_end", 0),
        in_grace = dialect.later_than_now("current_period_end", GRACE_DAYS),
        users = dialect.qualified("users"),
    )
}

/// The whole `CREATE VIEW user_tiers` statement m006 runs (m010's `down` restores it).
pub(crate) fn tier_view_sql(dialect: &dyn Dialect) -> String {
    format!(
        "{} {} AS {}",
        dialect.create_view_keyword(),
        dialect.qualified(TIER_VIEW),
        tier_view_body(dialect)
    )
}
