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
use sea_orm_migration::sea_orm::DbBackend;

use crate::idents::{SyncedSessions, Users};
use crate::probe::Probe;
use crate::schema::{qualified, table};
use crate::step::{Direction, Mode, Planned, Step, drop_invalid_leftover};

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

const BILLING_COLUMNS: [&str; 4] = [
    "stripe_customer_id",
    "subscription_id",
    "subscription_status",
    "current_period_end",
];

impl Planned for Migration {
    fn plan(&self, backend: DbBackend, direction: Direction) -> Vec<Step> {
        match direction {
            Direction::Up => up(backend),
            Direction::Down => down(backend),
        }
    }
}

crate::register_plan!(Migration);

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::require_tables(manager, self.name(), &["users", "synced_sessions"]).await?;
        crate::apply_planned(self, manager, Direction::Up).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::require_tables(manager, self.name(), &["users", "synced_sessions"]).await?;
        crate::apply_planned(self, manager, Direction::Down).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}

fn status_list() -> String {
    SUBSCRIPTION_STATUSES
        .iter()
        .map(|status| format!("'{status}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// MySQL/MariaDB: the status CHECK, compared as bytes: MySQL's default collations would let
/// 'ACTIVE' through.
fn mysql_status_check() -> Expr {
    Expr::col(Users::SubscriptionStatus)
        .cast_as("BINARY")
        .is_in(SUBSCRIPTION_STATUSES)
}

/// MySQL/MariaDB: the status CHECK in either form m006 has written: `chk_subscription_status`,
/// added by a statement of its own (m006 before the inline CHECK), or the column-level CHECK,
/// which MariaDB names after its column.
fn status_check_present() -> Probe {
    Probe::Any(vec![
        Probe::Constraint {
            table: "users",
            name: STATUS_CHECK,
            present: true,
        },
        Probe::Constraint {
            table: "users",
            name: MARIADB_INLINE_STATUS_CHECK,
            present: true,
        },
    ])
}

fn all_billing_columns(present: bool) -> Probe {
    Probe::All(
        BILLING_COLUMNS
            .iter()
            .map(|column| Probe::Column {
                table: "users",
                column,
                present,
            })
            .collect(),
    )
}

/// A Stripe object id. MySQL compares strings case-insensitively by default, which would make
/// `cus_AbC` and `cus_abc` collide in the unique index: Stripe ids are case-sensitive, so there
/// the column gets a binary collation.
fn stripe_id(backend: DbBackend, name: Users) -> ColumnDef {
    let mut def = ColumnDef::new(name);
    def.string_len(255);
    if backend == DbBackend::MySql {
        // The collation must follow the type directly, where sea-query would write NULL;
        // MySQL columns are nullable unless told otherwise.
        def.extra("CHARACTER SET utf8mb4 COLLATE utf8mb4_bin");
    } else {
        def.null();
    }
    def
}

fn stripe_customer_id(backend: DbBackend) -> ColumnDef {
    stripe_id(backend, Users::StripeCustomerId)
}

fn subscription_id(backend: DbBackend) -> ColumnDef {
    stripe_id(backend, Users::SubscriptionId)
}

fn subscription_status() -> ColumnDef {
    ColumnDef::new(Users::SubscriptionStatus)
        .string_len(50)
        .not_null()
        .default("none")
        .take()
}

fn current_period_end() -> ColumnDef {
    ColumnDef::new(Users::CurrentPeriodEnd)
        .timestamp_with_time_zone()
        .null()
        .take()
}

fn deleted_at() -> ColumnDef {
    ColumnDef::new(SyncedSessions::DeletedAt)
        .timestamp_with_time_zone()
        .null()
        .take()
}

fn customer_index(backend: DbBackend) -> IndexCreateStatement {
    Index::create()
        .name(CUSTOMER_INDEX)
        .table(table(backend, Users::Table))
        .col(Users::StripeCustomerId)
        .unique()
        .take()
}

fn deleted_at_index(backend: DbBackend) -> IndexCreateStatement {
    Index::create()
        .name(DELETED_AT_INDEX)
        .table(table(backend, SyncedSessions::Table))
        .col(SyncedSessions::DeletedAt)
        .take()
}

fn up(backend: DbBackend) -> Vec<Step> {
    let columns_done = Probe::All(vec![
        all_billing_columns(true),
        Probe::Constraint {
            table: "users",
            name: STATUS_CHECK,
            present: true,
        },
    ]);
    let customer_index_done = Probe::index_present("users", CUSTOMER_INDEX);
    let deleted_at_done = Probe::column_present("synced_sessions", "deleted_at");
    let deleted_index_done = Probe::index_present("synced_sessions", DELETED_AT_INDEX);
    let view_step = Step::new("create view user_tiers", Mode::LockTimed, Probe::Never)
        .raw(tier_view_sql(backend));

    match backend {
        DbBackend::Postgres => vec![
            Step::new(
                "add billing columns to users, CHECK NOT VALID",
                Mode::LockTimed,
                columns_done,
            )
            .build(
                backend,
                Table::alter()
                    .table(table(backend, Users::Table))
                    .add_column_if_not_exists(stripe_customer_id(backend))
                    .add_column_if_not_exists(subscription_id(backend))
                    .add_column_if_not_exists(subscription_status())
                    .add_column_if_not_exists(current_period_end()),
            )
            .raw(format!(
                "ALTER TABLE {} ADD CONSTRAINT \"{STATUS_CHECK}\" \
                 CHECK (\"subscription_status\" IN ({})) NOT VALID",
                qualified(backend, "users"),
                status_list()
            )),
            Step::new(
                "validate chk_subscription_status",
                Mode::LockTimed,
                Probe::ConstraintValidated {
                    table: "users",
                    name: STATUS_CHECK,
                },
            )
            .raw(format!(
                "ALTER TABLE {} VALIDATE CONSTRAINT \"{STATUS_CHECK}\"",
                qualified(backend, "users")
            )),
            drop_invalid_leftover(
                backend,
                "drop an INVALID idx_users_stripe_customer left by an interrupted build",
                Users::Table,
                "users",
                CUSTOMER_INDEX,
            ),
            Step::new(
                "build unique index idx_users_stripe_customer concurrently",
                Mode::Online,
                customer_index_done,
            )
            .build(
                backend,
                customer_index(backend).concurrently().if_not_exists(),
            ),
            Step::new(
                "add synced_sessions.deleted_at",
                Mode::LockTimed,
                deleted_at_done,
            )
            .build(
                backend,
                Table::alter()
                    .table(table(backend, SyncedSessions::Table))
                    .add_column_if_not_exists(deleted_at()),
            ),
            drop_invalid_leftover(
                backend,
                "drop an INVALID idx_sessions_deleted_at left by an interrupted build",
                SyncedSessions::Table,
                "synced_sessions",
                DELETED_AT_INDEX,
            ),
            Step::new(
                "build partial index idx_sessions_deleted_at concurrently",
                Mode::Online,
                deleted_index_done,
            )
            .build(
                backend,
                deleted_at_index(backend)
                    .concurrently()
                    .if_not_exists()
                    .and_where(Expr::col(SyncedSessions::DeletedAt).is_not_null()),
            ),
            view_step,
        ],
        DbBackend::MySql => vec![
            // sea-query cannot append ALGORITHM/LOCK clauses; they are added as text.
            Step::new(
                "add billing columns to users, CHECK inline (ALGORITHM=INSTANT)",
                Mode::LockTimed,
                all_billing_columns(true),
            )
            .raw(format!(
                "{}, ALGORITHM=INSTANT",
                backend.build(
                    Table::alter()
                        .table(table(backend, Users::Table))
                        .add_column(stripe_customer_id(backend))
                        .add_column(subscription_id(backend))
                        .add_column(subscription_status().check(mysql_status_check()).take())
                        .add_column(current_period_end())
                )
            )),
            // Only for a `users` that an m006 from before the inline CHECK left half done (its
            // columns added, its separate CHECK not yet): the step above then counts as done,
            // and this one adds the CHECK as that m006 did, copying the table. Elsewhere the
            // inline CHECK, which MariaDB names after the column, makes it skip.
            Step::new(
                "add chk_subscription_status where an interrupted older m006 left none (table copy)",
                Mode::LockTimed,
                status_check_present(),
            )
            .raw(format!(
                "ALTER TABLE `users` ADD CONSTRAINT `{STATUS_CHECK}` \
                 CHECK (CAST(`subscription_status` AS BINARY) IN ({})), \
                 ALGORITHM=COPY, LOCK=SHARED",
                status_list()
            )),
            Step::new(
                "build unique index idx_users_stripe_customer (LOCK=NONE)",
                Mode::LockTimed,
                customer_index_done,
            )
            .raw(format!(
                "{} ALGORITHM=INPLACE LOCK=NONE",
                backend.build(&customer_index(backend))
            )),
            Step::new(
                "add synced_sessions.deleted_at (ALGORITHM=INSTANT)",
                Mode::LockTimed,
                deleted_at_done,
            )
            .raw(format!(
                "{}, ALGORITHM=INSTANT",
                backend.build(
                    Table::alter()
                        .table(table(backend, SyncedSessions::Table))
                        .add_column(deleted_at())
                )
            )),
            Step::new(
                "build index idx_sessions_deleted_at (LOCK=NONE)",
                Mode::LockTimed,
                deleted_index_done,
            )
            .raw(format!(
                "{} ALGORITHM=INPLACE LOCK=NONE",
                backend.build(&deleted_at_index(backend))
            )),
            view_step,
        ],
        _ => {
            // SQLite: one alteration per ALTER TABLE; each step is its own short transaction.
            let add = |summary, column: &'static str, def: ColumnDef| {
                Step::new(
                    summary,
                    Mode::LockTimed,
                    Probe::column_present("users", column),
                )
                .build(
                    backend,
                    Table::alter()
                        .table(table(backend, Users::Table))
                        .add_column(def),
                )
            };
            vec![
                add(
                    "add users.stripe_customer_id",
                    "stripe_customer_id",
                    stripe_customer_id(backend),
                ),
                add(
                    "add users.subscription_id",
                    "subscription_id",
                    subscription_id(backend),
                ),
                add(
                    "add users.subscription_status with chk_subscription_status",
                    "subscription_status",
                    subscription_status()
                        .check(Check::named(
                            STATUS_CHECK,
                            Expr::col(Users::SubscriptionStatus).is_in(SUBSCRIPTION_STATUSES),
                        ))
                        .take(),
                ),
                add(
                    "add users.current_period_end",
                    "current_period_end",
                    current_period_end(),
                ),
                Step::new(
                    "create unique index idx_users_stripe_customer",
                    Mode::LockTimed,
                    customer_index_done,
                )
                .build(backend, &customer_index(backend)),
                Step::new(
                    "add synced_sessions.deleted_at",
                    Mode::LockTimed,
                    deleted_at_done,
                )
                .build(
                    backend,
                    Table::alter()
                        .table(table(backend, SyncedSessions::Table))
                        .add_column(deleted_at()),
                ),
                Step::new(
                    "create partial index idx_sessions_deleted_at",
                    Mode::LockTimed,
                    deleted_index_done,
                )
                .build(
                    backend,
                    deleted_at_index(backend)
                        .and_where(Expr::col(SyncedSessions::DeletedAt).is_not_null()),
                ),
                view_step,
            ]
        }
    }
}

fn down(backend: DbBackend) -> Vec<Step> {
    let drop_view = Step::new(
        "drop view user_tiers",
        Mode::LockTimed,
        Probe::View {
            name: TIER_VIEW,
            present: false,
        },
    )
    .raw(format!(
        "DROP VIEW IF EXISTS {}",
        qualified(backend, TIER_VIEW)
    ));
    let deleted_index_gone = Probe::index_absent("synced_sessions", DELETED_AT_INDEX);
    let deleted_at_gone = Probe::column_absent("synced_sessions", "deleted_at");
    let customer_index_gone = Probe::index_absent("users", CUSTOMER_INDEX);

    match backend {
        DbBackend::Postgres => vec![
            drop_view,
            Step::new(
                "drop index idx_sessions_deleted_at concurrently",
                Mode::Online,
                deleted_index_gone,
            )
            .build(
                backend,
                Index::drop()
                    .name(DELETED_AT_INDEX)
                    .table(table(backend, SyncedSessions::Table))
                    .if_exists()
                    .concurrently(),
            ),
            Step::new(
                "drop synced_sessions.deleted_at",
                Mode::LockTimed,
                deleted_at_gone,
            )
            .build(
                backend,
                Table::alter()
                    .table(table(backend, SyncedSessions::Table))
                    .drop_column_if_exists(SyncedSessions::DeletedAt),
            ),
            Step::new(
                "drop index idx_users_stripe_customer concurrently",
                Mode::Online,
                customer_index_gone,
            )
            .build(
                backend,
                Index::drop()
                    .name(CUSTOMER_INDEX)
                    .table(table(backend, Users::Table))
                    .if_exists()
                    .concurrently(),
            ),
            Step::new(
                "drop chk_subscription_status and the billing columns",
                Mode::LockTimed,
                all_billing_columns(false),
            )
            // sea-query's ALTER TABLE cannot drop a constraint.
            .raw(format!(
                "ALTER TABLE {} DROP CONSTRAINT IF EXISTS \"{STATUS_CHECK}\"",
                qualified(backend, "users")
            ))
            .build(
                backend,
                Table::alter()
                    .table(table(backend, Users::Table))
                    .drop_column_if_exists(Users::StripeCustomerId)
                    .drop_column_if_exists(Users::SubscriptionId)
                    .drop_column_if_exists(Users::SubscriptionStatus)
                    .drop_column_if_exists(Users::CurrentPeriodEnd),
            ),
        ],
        DbBackend::MySql => vec![
            drop_view,
            Step::new(
                "drop index idx_sessions_deleted_at",
                Mode::LockTimed,
                deleted_index_gone,
            )
            .build(
                backend,
                Index::drop()
                    .name(DELETED_AT_INDEX)
                    .table(table(backend, SyncedSessions::Table)),
            ),
            Step::new(
                "drop synced_sessions.deleted_at",
                Mode::LockTimed,
                deleted_at_gone,
            )
            .raw(format!(
                "{}, ALGORITHM=INSTANT",
                backend.build(
                    Table::alter()
                        .table(table(backend, SyncedSessions::Table))
                        .drop_column(SyncedSessions::DeletedAt)
                )
            )),
            Step::new(
                "drop index idx_users_stripe_customer",
                Mode::LockTimed,
                customer_index_gone,
            )
            .build(
                backend,
                Index::drop()
                    .name(CUSTOMER_INDEX)
                    .table(table(backend, Users::Table)),
            ),
            Step::new(
                "drop chk_subscription_status",
                Mode::LockTimed,
                Probe::Constraint {
                    table: "users",
                    name: STATUS_CHECK,
                    present: false,
                },
            )
            .raw(format!(
                "ALTER TABLE `users` DROP CONSTRAINT `{STATUS_CHECK}`"
            )),
            Step::new(
                "drop the billing columns (ALGORITHM=INSTANT)",
                Mode::LockTimed,
                all_billing_columns(false),
            )
            .raw(format!(
                "{}, ALGORITHM=INSTANT",
                backend.build(
                    Table::alter()
                        .table(table(backend, Users::Table))
                        .drop_column(Users::StripeCustomerId)
                        .drop_column(Users::SubscriptionId)
                        .drop_column(Users::SubscriptionStatus)
                        .drop_column(Users::CurrentPeriodEnd)
                )
            )),
        ],
        _ => {
            let drop = |summary, column: &'static str, name: Users| {
                Step::new(
                    summary,
                    Mode::LockTimed,
                    Probe::column_absent("users", column),
                )
                .build(
                    backend,
                    Table::alter()
                        .table(table(backend, Users::Table))
                        .drop_column(name),
                )
            };
            vec![
                drop_view,
                Step::new(
                    "drop index idx_sessions_deleted_at",
                    Mode::LockTimed,
                    deleted_index_gone,
                )
                .build(backend, Index::drop().name(DELETED_AT_INDEX)),
                Step::new(
                    "drop synced_sessions.deleted_at",
                    Mode::LockTimed,
                    deleted_at_gone,
                )
                .build(
                    backend,
                    Table::alter()
                        .table(table(backend, SyncedSessions::Table))
                        .drop_column(SyncedSessions::DeletedAt),
                ),
                Step::new(
                    "drop index idx_users_stripe_customer",
                    Mode::LockTimed,
                    customer_index_gone,
                )
                .build(backend, Index::drop().name(CUSTOMER_INDEX)),
                drop(
                    "drop users.current_period_end",
                    "current_period_end",
                    Users::CurrentPeriodEnd,
                ),
                drop(
                    "drop users.subscription_status and its CHECK",
                    "subscription_status",
                    Users::SubscriptionStatus,
                ),
                drop(
                    "drop users.subscription_id",
                    "subscription_id",
                    Users::SubscriptionId,
                ),
                drop(
                    "drop users.stripe_customer_id",
                    "stripe_customer_id",
                    Users::StripeCustomerId,
                ),
            ]
        }
    }
}

/// `user_tiers(user_id, tier)`: the tier rule in SQL, the twin of `entity`'s `tier_at`.
///
/// Pro while `active`/`trialing` and the period has not ended (or has no end); Pro while
/// `past_due` and less than GRACE_DAYS past the period end; Free otherwise.
pub(crate) fn tier_view_sql(backend: DbBackend) -> String {
    let (create, not_ended, in_grace) = match backend {
        DbBackend::Postgres => (
            "CREATE OR REPLACE VIEW",
            "current_period_end > now()".to_owned(),
            format!("current_period_end + interval '{GRACE_DAYS} days' > now()"),
        ),
        DbBackend::MySql => (
            "CREATE OR REPLACE VIEW",
            "current_period_end > CURRENT_TIMESTAMP".to_owned(),
            format!("current_period_end + INTERVAL {GRACE_DAYS} DAY > CURRENT_TIMESTAMP"),
        ),
        // SQLite stores timestamps as RFC 3339 text; julianday() compares them as instants.
        _ => (
            "CREATE VIEW IF NOT EXISTS",
            "julianday(current_period_end) > julianday('now')".to_owned(),
            format!("julianday(current_period_end) + {GRACE_DAYS} > julianday('now')"),
        ),
    };
    format!(
        "{create} {view} AS SELECT id AS user_id, CASE \
         WHEN subscription_status IN ('active', 'trialing') \
         AND (current_period_end IS NULL OR {not_ended}) THEN 'pro' \
         WHEN subscription_status = 'past_due' AND current_period_end IS NOT NULL \
         AND {in_grace} THEN 'pro' \
         ELSE 'free' END AS tier FROM {users}",
        view = qualified(backend, TIER_VIEW),
        users = qualified(backend, "users"),
    )
}
