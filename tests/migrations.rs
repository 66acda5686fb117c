//! m001-m012 on every backend, each test in a database of its own.

mod support;

use chrono::{Duration, Utc};
use entity::{SubscriptionStatus, Tier, stripe_customers, stripe_subscriptions, users};
use migration::m006_billing_fields::SUBSCRIPTION_STATUSES;
use migration::probe::Probe;
use migration::step::{self, Direction};
use migration::{Migrator, MigratorTrait, SchemaManager};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait};
use support::schema::{snapshot, without_bookkeeping};
use support::{Backend, TestDb};

const M005: u32 = 5;

on_every_backend!(
    migrates_an_empty_database,
    keeps_existing_rows,
    constraint_admits_exactly_the_six_statuses,
    stripe_customer_id_is_unique_but_nulls_are_free,
    down_restores_the_previous_schema_and_up_again_matches_a_clean_run,
    an_interrupted_up_or_down_finishes_when_run_again,
    rust_and_sql_agree_on_the_tier,
    client_ids_differing_by_case_are_two_sessions,
    rust_and_sql_agree_over_several_subscriptions,
    m010_backfills_customers_and_each_subscriptions_latest_snapshot,
    m010_backfills_every_range_of_events_whole,
    m011_dates_past_due_from_the_first_event_showing_it,
    m012_keeps_every_stored_tier_until_the_list_is_applied,
    past_due_grace_counts_from_the_failure_not_the_period_end,
    an_online_step_is_refused_inside_a_transaction,
    a_migration_declares_the_tables_it_needs,
    m010_applied_by_its_first_plan_is_not_a_changed_migration,
);

async fn migrated(backend: Backend) -> TestDb {
    let t = TestDb::new(backend).await;
    Migrator::up(&t.db, None).await.expect("up");
    t
}

async fn migrates_an_empty_database(backend: Backend) {
    let t = migrated(backend).await;
    let schema = snapshot(&t).await.join("\n");
    for column in [
        "stripe_customer_id",
        "subscription_id",
        "subscription_status",
        "current_period_end",
    ] {
        assert!(
            schema.contains(&format!("column|users|{column}|")),
            "{column} missing"
        );
    }
    assert!(schema.contains("column|synced_sessions|deleted_at|"));
    assert!(schema.contains("idx_users_stripe_customer"));
    assert!(schema.contains("idx_sessions_deleted_at"));
    match backend {
        Backend::Sqlite => assert!(schema.contains("check|users|1"), "{schema}"),
        Backend::Postgres => assert!(schema.contains("chk_subscription_status"), "{schema}"),
        // MariaDB names the column-level CHECK (added without a table copy) after its column.
        Backend::MySql => assert!(
            schema.contains("constraint|users|subscription_status|CHECK|"),
            "{schema}"
        ),
    }
    assert!(schema.contains("user_tiers"));
    // Exactly one index covers stripe_customer_id.
    let indexes_on_customer = snapshot(&t)
        .await
        .into_iter()
        .filter(|l| {
            (l.starts_with("index|") || l.starts_with("object|index"))
                && l.contains("stripe_customer_id")
        })
        .count();
    assert_eq!(indexes_on_customer, 1, "{schema}");
    let status = Migrator::get_pending_migrations(&t.db)
        .await
        .expect("status");
    assert!(status.is_empty());
}

async fn keeps_existing_rows(backend: Backend) {
    let t = TestDb::new(backend).await;
    Migrator::up(&t.db, Some(M005)).await.expect("up to m005");
    for i in 0..50 {
        t.exec(&format!(
            "INSERT INTO users (email, display_name) VALUES ('u{i}@example.com', {})",
            if i % 3 == 0 {
                "NULL".to_owned()
            } else {
                format!("'User {i}'")
            }
        ))
        .await;
    }
    t.exec(
        "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) \
         SELECT id, 'c1', 'laptop', '{\"tabs\":3}' FROM users",
    )
    .await;
    let before_users = t
        .texts("SELECT concat_ws('|', id, email, coalesce(display_name, '-'), created_at) FROM users ORDER BY id")
        .await;
    let before_sessions = t
        .texts("SELECT concat_ws('|', id, user_id, client_id, device_name, payload, created_at) FROM synced_sessions ORDER BY id")
        .await;
    assert_eq!(before_users.len(), 50);

    Migrator::up(&t.db, None)
        .await
        .expect("m006 over existing rows");

    let after_users = t
        .texts("SELECT concat_ws('|', id, email, coalesce(display_name, '-'), created_at) FROM users ORDER BY id")
        .await;
    let after_sessions = t
        .texts("SELECT concat_ws('|', id, user_id, client_id, device_name, payload, created_at) FROM synced_sessions ORDER BY id")
        .await;
    assert_eq!(before_users, after_users);
    assert_eq!(before_sessions, after_sessions);
    let billing = t
        .texts(
            "SELECT DISTINCT concat_ws('|', subscription_status, coalesce(stripe_customer_id, 'null'), \
             coalesce(subscription_id, 'null'), CASE WHEN current_period_end IS NULL THEN 'null' ELSE 'set' END) FROM users",
        )
        .await;
    assert_eq!(billing, vec!["none|null|null|null"]);
    let deleted = t
        .texts("SELECT count(*) FROM synced_sessions WHERE deleted_at IS NOT NULL")
        .await;
    assert_eq!(deleted, vec!["0"]);
}

async fn constraint_admits_exactly_the_six_statuses(backend: Backend) {
    // The migration's frozen list and the entity's enum agree, both ways.
    let from_entity: Vec<&str> = SubscriptionStatus::ALL
        .into_iter()
        .filter(|s| s.fits_user_column())
        .map(|s| s.as_str())
        .collect();
    assert_eq!(from_entity, SUBSCRIPTION_STATUSES);

    let t = migrated(backend).await;
    for (i, status) in SUBSCRIPTION_STATUSES.iter().enumerate() {
        t.exec(&format!(
            "INSERT INTO users (email, subscription_status) VALUES ('ok{i}@x.test', '{status}')"
        ))
        .await;
    }
    for (i, bad) in ["'bogus'", "'ACTIVE'", "''", "'incomplete'", "NULL"]
        .iter()
        .enumerate()
    {
        let sql = format!(
            "INSERT INTO users (email, subscription_status) VALUES ('bad{i}@x.test', {bad})"
        );
        assert!(
            t.db.execute_unprepared(&sql).await.is_err(),
            "accepted {bad}"
        );
    }
    let bad_update = "UPDATE users SET subscription_status = 'paused'";
    assert!(t.db.execute_unprepared(bad_update).await.is_err());
    let defaulted = "INSERT INTO users (email) VALUES ('default@x.test')";
    t.exec(defaulted).await;
    assert_eq!(
        t.texts("SELECT subscription_status FROM users WHERE email = 'default@x.test'")
            .await,
        vec!["none"]
    );
}

async fn stripe_customer_id_is_unique_but_nulls_are_free(backend: Backend) {
    let t = migrated(backend).await;
    for i in 0..3 {
        t.exec(&format!("INSERT INTO users (email) VALUES ('n{i}@x.test')"))
            .await;
    }
    t.exec("INSERT INTO users (email, stripe_customer_id) VALUES ('a@x.test', 'cus_1')")
        .await;
    // Stripe ids are case-sensitive: these are two customers on every backend.
    t.exec("INSERT INTO users (email, stripe_customer_id) VALUES ('c@x.test', 'CUS_1')")
        .await;
    let dup = "INSERT INTO users (email, stripe_customer_id) VALUES ('b@x.test', 'cus_1')";
    let err =
        t.db.execute_unprepared(dup)
            .await
            .expect_err("duplicate accepted");
    assert!(
        matches!(
            err.sql_err(),
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
        ),
        "{err}"
    );
}

/// The migrations written for billing, each checked on its own by the two tests below.
const BILLING_MIGRATIONS: [u32; 7] = [6, 7, 8, 9, 10, 11, 12];

/// Where migration number `version` (as in its name, `mNNN_...`) stands in the list, 0-based.
fn position(version: u32) -> usize {
    let prefix = format!("m{version:03}_");
    Migrator::planned()
        .iter()
        .position(|m| m.name().starts_with(&prefix))
        .unwrap_or_else(|| panic!("no migration {prefix}"))
}

/// Migration number `version`, its name and its step plan.
fn planned(
    version: u32,
    backend: sea_orm::DbBackend,
    direction: Direction,
) -> (String, Vec<step::Step>) {
    let all = Migrator::planned();
    let migration = &all[position(version)];
    (
        migration.name().to_owned(),
        migration.plan(backend, direction),
    )
}

/// A database at the migration before `version`, its schema then, and its schema once
/// `version` is applied (left applied).
async fn before_and_after(backend: Backend, version: u32) -> (TestDb, Vec<String>, Vec<String>) {
    let t = TestDb::new(backend).await;
    Migrator::up(&t.db, Some(position(version) as u32))
        .await
        .expect("up to the one before");
    let before = without_bookkeeping(snapshot(&t).await);
    Migrator::up(&t.db, Some(1)).await.expect("up");
    let after = without_bookkeeping(snapshot(&t).await);
    (t, before, after)
}

async fn down_restores_the_previous_schema_and_up_again_matches_a_clean_run(backend: Backend) {
    for version in BILLING_MIGRATIONS {
        let (t, before, after) = before_and_after(backend, version).await;
        let (name, steps) = planned(version, t.db_backend(), Direction::Up);
        // m008 has nothing to do on MySQL and SQLite, m009 nothing on PostgreSQL and SQLite;
        // everything else changes the schema.
        assert_eq!(before != after, !steps.is_empty(), "{name}");

        Migrator::down(&t.db, Some(1)).await.expect("down");
        assert_eq!(
            without_bookkeeping(snapshot(&t).await),
            before,
            "{name} down"
        );
        Migrator::up(&t.db, Some(1)).await.expect("up again");
        assert_eq!(
            without_bookkeeping(snapshot(&t).await),
            after,
            "{name} up again"
        );
    }
}

/// A crash (or failed statement) after any step leaves a state from which `up` and `down`
/// finish the job: the end state equals a clean run's.
async fn an_interrupted_up_or_down_finishes_when_run_again(backend: Backend) {
    for version in BILLING_MIGRATIONS {
        let (t, before, after) = before_and_after(backend, version).await;
        Migrator::down(&t.db, Some(1)).await.expect("down");
        let manager = SchemaManager::new(&t.db);
        let (name, up_steps) = planned(version, t.db_backend(), Direction::Up);
        for k in 0..up_steps.len() {
            for (direction, expected) in [(Direction::Up, &after), (Direction::Down, &before)] {
                let (_, steps) = planned(version, t.db_backend(), direction);
                let partial: Vec<_> = steps.into_iter().take(k).collect();
                step::apply(&manager, &name, direction, partial)
                    .await
                    .expect("partial run");
                let finished = match direction {
                    Direction::Up => Migrator::up(&t.db, Some(1)).await,
                    Direction::Down => Migrator::down(&t.db, Some(1)).await,
                };
                let direction = direction.as_str();
                finished
                    .unwrap_or_else(|e| panic!("{name}: re-run {direction} after {k} steps: {e}"));
                assert_eq!(
                    &without_bookkeeping(snapshot(&t).await),
                    expected,
                    "{name} {direction} interrupted after {k} steps"
                );
            }
        }
    }
}

/// An `Online` step (`CREATE INDEX CONCURRENTLY` and friends) cannot share a transaction:
/// handed one, the engine refuses the whole plan before its first step, by a typed check.
async fn an_online_step_is_refused_inside_a_transaction(backend: Backend) {
    use sea_orm::TransactionTrait;
    let t = TestDb::new(backend).await;
    let steps = vec![
        step::Step::new("create table before", step::Mode::Plain, Probe::Never)
            .raw("CREATE TABLE before_online (x INT)"),
        step::Step::new("an online step", step::Mode::Online, Probe::Never).raw("SELECT 1"),
    ];
    let refusal = {
        let txn = t.db.begin().await.expect("begin");
        let manager = SchemaManager::new(&txn);
        assert_eq!(
            step::check_runnable(manager.get_connection(), "m999_test", &steps),
            Err(step::Refusal::OnlineInTransaction {
                migration: "m999_test".into(),
                step: "an online step".into(),
            })
        );
        let outcome = step::apply(&manager, "m999_test", Direction::Up, steps.clone()).await;
        txn.commit().await.expect("commit");
        outcome.expect_err("refused")
    };
    assert!(
        refusal
            .to_string()
            .contains("use_transaction() -> Some(false)"),
        "{refusal}"
    );
    let tables = without_bookkeeping(snapshot(&t).await).join("\n");
    assert!(!tables.contains("before_online"), "a step ran: {tables}");

    // Outside a transaction the same plan runs.
    let manager = SchemaManager::new(&t.db);
    step::apply(&manager, "m999_test", Direction::Up, steps)
        .await
        .expect("runs outside a transaction");
    assert!(
        without_bookkeeping(snapshot(&t).await)
            .join("\n")
            .contains("before_online")
    );
}

/// m006, m008 and m010 declare the tables they build on: missing ones stop them before any
/// step, named in the error.
async fn a_migration_declares_the_tables_it_needs(backend: Backend) {
    for (version, needs) in [
        (6, &["users", "synced_sessions"][..]),
        (8, &["synced_sessions"][..]),
        (10, &["users", "stripe_events"][..]),
    ] {
        let all = Migrator::planned();
        assert_eq!(
            all[position(version)].required_tables(),
            needs,
            "m{version:03}"
        );
    }
    let t = TestDb::new(backend).await;
    let manager = SchemaManager::new(&t.db);
    let all = Migrator::migrations();
    let m006 = &all[position(6)];
    let err = m006.up(&manager).await.expect_err("no tables");
    assert!(err.to_string().contains("users, synced_sessions"), "{err}");
    let schema = without_bookkeeping(snapshot(&t).await).join("\n");
    assert!(!schema.contains("stripe_customer_id"), "{schema}");
}

/// After m009, `Laptop` and `laptop` are two sessions of one user on every backend (MySQL
/// compared them case-insensitively before), a payload over 65,535 bytes fits, and m009 kept
/// the rows it found.
async fn client_ids_differing_by_case_are_two_sessions(backend: Backend) {
    let t = TestDb::new(backend).await;
    Migrator::up(&t.db, Some(8)).await.expect("up to m008");
    t.exec("INSERT INTO users (email) VALUES ('a@x.test')")
        .await;
    t.exec(
        "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) \
         SELECT id, 'Laptop', 'd', 'kept' FROM users",
    )
    .await;
    Migrator::up(&t.db, None).await.expect("m009");
    let second = "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) \
                  SELECT id, 'laptop', 'd', 'other' FROM users";
    t.db.execute_unprepared(second)
        .await
        .expect("laptop is another session than Laptop");
    assert_eq!(
        t.texts("SELECT payload FROM synced_sessions WHERE client_id = 'Laptop'")
            .await,
        vec!["kept"]
    );
    let large = format!(
        "UPDATE synced_sessions SET payload = '{}' WHERE client_id = 'laptop'",
        "x".repeat(70_000)
    );
    t.exec(&large).await;
    assert_eq!(
        t.texts(
            "SELECT count(*) FROM synced_sessions \
             WHERE client_id = 'laptop' AND length(payload) = 70000"
        )
        .await,
        vec!["1"]
    );
}

/// Every status the user's columns admit crossed with every period-end position, every
/// past-due-since position, both renewal flags and both Pro-price flags, read through the
/// `user_tiers` view and through `users::Model::billing_at()`.
async fn rust_and_sql_agree_on_the_tier(backend: Backend) {
    let t = migrated(backend).await;
    let now = Utc::now();
    let days = |d: i64| Some(now + Duration::days(d));
    let ends = [
        ("null", None),
        ("future", days(3)),
        ("within_renewal_grace", days(-1)),
        ("beyond_renewal_grace", days(-5)),
    ];
    let since = [
        ("never", None),
        ("yesterday", days(-1)),
        ("within_grace", days(-6)),
        ("beyond_grace", days(-8)),
    ];
    let mut n = 0;
    for status in SubscriptionStatus::ALL
        .into_iter()
        .filter(|s| s.fits_user_column())
    {
        for (end_label, end) in ends {
            for (since_label, past_due_since) in since {
                for ends_at_period_end in [false, true] {
                    for price_grants_pro in [false, true] {
                        n += 1;
                        users::ActiveModel {
                            email: Set(format!(
                                "{status}-{end_label}-{since_label}-{ends_at_period_end}-\
                                 {price_grants_pro}@x.test"
                            )),
                            subscription_status: Set(status.into()),
                            current_period_end: Set(end.map(|e| e.fixed_offset())),
                            past_due_since: Set(past_due_since.map(|e| e.fixed_offset())),
                            ends_at_period_end: Set(ends_at_period_end),
                            price_grants_pro: Set(price_grants_pro),
                            ..Default::default()
                        }
                        .insert(&t.db)
                        .await
                        .unwrap_or_else(|e| panic!("insert {status} {end_label}: {e}"));
                    }
                }
            }
        }
    }
    let models = users::Entity::find().all(&t.db).await.expect("load users");
    assert_eq!(models.len(), n);
    let (mut pro, mut retention_pro) = (0, 0);
    for model in models {
        let (sql_tier, sql_retention) = sql_tiers(&t, model.id).await;
        let billing = model.billing_at(&t.db, Utc::now()).await.expect("tier");
        assert_eq!(sql_tier, billing.tier.as_str(), "tier: {}", model.email);
        assert_eq!(
            sql_retention,
            billing.retention_tier.as_str(),
            "retention tier: {}",
            model.email
        );
        pro += usize::from(billing.tier == Tier::Pro);
        retention_pro += usize::from(billing.retention_tier == Tier::Pro);
    }
    // Only users whose price grants Pro (half of them); among those, active and trialing: 16
    // each, less the ended-with-no-renewal and lapsed ones (null and future: 8 each, within
    // the renewal grace: 4 (renewing only)); past_due: yesterday and within the grace,
    // whatever the period end (4 x 2 x 2 = 16).
    assert_eq!(pro, 2 * (8 + 8 + 4) + 16, "of {n}");
    assert!(retention_pro > pro, "{retention_pro} vs {pro}");
}

/// `(tier, retention_tier)` of one user, from the view.
async fn sql_tiers(t: &TestDb, user_id: i64) -> (String, String) {
    let rows = t
        .texts(&format!(
            "SELECT concat(tier, '|', retention_tier) FROM user_tiers WHERE user_id = {user_id}"
        ))
        .await;
    assert_eq!(rows.len(), 1, "user {user_id}");
    let (tier, retention) = rows[0].split_once('|').expect("two columns");
    (tier.to_owned(), retention.to_owned())
}

/// Users with two subscriptions (under one customer or two, one possibly deleted), every
/// status and period-end position for the first crossed with a few for the second. Several
/// positions are a clock moved past a subscription's period end: the columns name the
/// subscription that decided before, and the tier must come from the other one.
async fn rust_and_sql_agree_over_several_subscriptions(backend: Backend) {
    let t = migrated(backend).await;
    let now = Utc::now();
    let days = |d: i64| Some((now + Duration::days(d)).fixed_offset());
    let positions = [
        None,
        days(3),
        days(-1),
        days(-2).map(|e| e - Duration::hours(22)),
        days(-5),
        days(-9),
        days(-12),
    ];
    use SubscriptionStatus as S;
    let seconds = [
        (S::Active, days(-4)),
        (S::PastDue, days(-1)),
        (S::Canceled, days(20)),
        (S::Trialing, None),
    ];
    let mut n = 0;
    let mut pro = 0;
    let mut retention_pro = 0;
    for status in SubscriptionStatus::ALL {
        for end in positions {
            for (second_status, second_end) in seconds {
                for layout in ["one_customer", "two_customers", "second_deleted"] {
                    n += 1;
                    // A past_due subscription became past due on its period-end position's
                    // day, a period later (Stripe moves the period first); every fourth one
                    // was told to end at the period end.
                    let since = |status, end: Option<chrono::DateTime<chrono::FixedOffset>>| {
                        (status == S::PastDue)
                            .then(|| end.map(|e| e - Duration::days(30)))
                            .flatten()
                    };
                    let ends_at_period_end = n % 4 == 0;
                    // Off the Pro list: every third first subscription (and the columns
                    // copied from it), every fifth second one.
                    let (first_pro, second_pro) = (n % 3 != 0, n % 5 != 0);
                    let user = users::ActiveModel {
                        email: Set(format!("u{n}@x.test")),
                        // The columns as an earlier write left them: the first subscription.
                        subscription_id: Set(Some(format!("sub_{n}_a"))),
                        subscription_status: Set(status.for_user_column().into()),
                        current_period_end: Set(end),
                        past_due_since: Set(since(status, end)),
                        ends_at_period_end: Set(ends_at_period_end),
                        price_grants_pro: Set(first_pro),
                        stripe_customer_id: Set(Some(format!("cus_{n}_a"))),
                        ..Default::default()
                    }
                    .insert(&t.db)
                    .await
                    .expect("user");
                    let second_customer = match layout {
                        "one_customer" => format!("cus_{n}_a"),
                        _ => format!("cus_{n}_b"),
                    };
                    for (customer, deleted) in [
                        (format!("cus_{n}_a"), false),
                        (format!("cus_{n}_b"), layout == "second_deleted"),
                    ] {
                        stripe_customers::ActiveModel {
                            customer_id: Set(customer),
                            user_id: Set(Some(user.id)),
                            deleted_at: Set(deleted.then(|| now.fixed_offset())),
                            created_at: Set(now.fixed_offset()),
                        }
                        .insert(&t.db)
                        .await
                        .expect("customer");
                    }
                    for (id, customer, status, end, price_grants_pro) in [
                        (
                            format!("sub_{n}_a"),
                            format!("cus_{n}_a"),
                            status,
                            end,
                            first_pro,
                        ),
                        (
                            format!("sub_{n}_b"),
                            second_customer,
                            second_status,
                            second_end,
                            second_pro,
                        ),
                    ] {
                        stripe_subscriptions::ActiveModel {
                            subscription_id: Set(id),
                            customer_id: Set(customer),
                            status: Set(status.into()),
                            current_period_end: Set(end),
                            created: Set(1),
                            lifecycle_rank: Set(0),
                            updated_at: Set(now.fixed_offset()),
                            past_due_since: Set(since(status, end)),
                            ends_at_period_end: Set(ends_at_period_end),
                            price_grants_pro: Set(price_grants_pro),
                        }
                        .insert(&t.db)
                        .await
                        .expect("subscription");
                    }
                    let (sql_tier, sql_retention) = sql_tiers(&t, user.id).await;
                    let billing = user.billing_at(&t.db, Utc::now()).await.expect("billing");
                    let case = format!(
                        "{status} {end:?} {first_pro} + {second_status} {second_end:?} \
                         {second_pro} ({layout})"
                    );
                    assert_eq!(sql_tier, billing.tier.as_str(), "tier: {case}");
                    assert_eq!(
                        sql_retention,
                        billing.retention_tier.as_str(),
                        "retention tier: {case}"
                    );
                    pro += usize::from(billing.tier == Tier::Pro);
                    retention_pro += usize::from(billing.retention_tier == Tier::Pro);
                }
            }
        }
    }
    // Both outcomes occur, and the purge's tier is never narrower than the tier.
    assert!(pro > 0 && pro < n, "{pro} of {n}");
    assert!(retention_pro > pro, "{retention_pro} vs {pro}");
}

/// The view's graces are numbers frozen in m010 and m011; the Rust rule's must equal them.
#[test]
fn the_graces_are_the_same_in_sql_and_rust() {
    assert_eq!(
        i64::from(migration::m010_subscriptions::RENEWAL_GRACE_DAYS),
        entity::RENEWAL_GRACE_DAYS
    );
    assert_eq!(
        i64::from(migration::m011_past_due_since::RENEWAL_GRACE_DAYS),
        entity::RENEWAL_GRACE_DAYS
    );
    assert_eq!(
        i64::from(migration::m011_past_due_since::PAST_DUE_GRACE_DAYS),
        entity::GRACE_PERIOD_DAYS
    );
}

/// Issue 18's first reproduction: Stripe moved the period to the one being billed, and the
/// renewal failed 20 days ago (monthly) or 300 days ago (yearly). Both were Pro until the
/// unpaid period's end + 7 days; now Free, in the view and in Rust. A failure 2 days ago
/// still keeps Pro, whatever the period end.
async fn past_due_grace_counts_from_the_failure_not_the_period_end(backend: Backend) {
    let t = migrated(backend).await;
    let now = Utc::now();
    let at = |d: i64| Some((now + Duration::days(d)).fixed_offset());
    for (email, failed, period_end, expected) in [
        ("monthly@x.test", -20, 10, Tier::Free),
        ("yearly@x.test", -300, 65, Tier::Free),
        ("recent@x.test", -2, 28, Tier::Pro),
        ("recent-yearly@x.test", -2, 363, Tier::Pro),
    ] {
        let user = users::ActiveModel {
            email: Set(email.to_owned()),
            stripe_customer_id: Set(Some(format!("cus_{email}"))),
            ..Default::default()
        }
        .insert(&t.db)
        .await
        .expect("user");
        stripe_customers::ActiveModel {
            customer_id: Set(format!("cus_{email}")),
            user_id: Set(Some(user.id)),
            deleted_at: Set(None),
            created_at: Set(now.fixed_offset()),
        }
        .insert(&t.db)
        .await
        .expect("customer");
        stripe_subscriptions::ActiveModel {
            subscription_id: Set(format!("sub_{email}")),
            customer_id: Set(format!("cus_{email}")),
            status: Set("past_due".to_owned()),
            current_period_end: Set(at(period_end)),
            created: Set(now.timestamp() + failed * 86_400),
            lifecycle_rank: Set(3),
            updated_at: Set(now.fixed_offset()),
            past_due_since: Set(at(failed)),
            ends_at_period_end: Set(false),
            price_grants_pro: Set(true),
        }
        .insert(&t.db)
        .await
        .expect("subscription");
        let (sql_tier, _) = sql_tiers(&t, user.id).await;
        let rust_tier = user.billing_at(&t.db, now).await.expect("billing").tier;
        assert_eq!(rust_tier, expected, "{email}");
        assert_eq!(sql_tier, expected.as_str(), "{email}");
    }
}

/// m011's backfill: a past_due subscription's `past_due_since` is its first past_due event
/// after the last event in another status; one no event dates (sync, by hand) gets the
/// migration's time; a user's own past_due columns take their subscription's.
async fn m011_dates_past_due_from_the_first_event_showing_it(backend: Backend) {
    let t = TestDb::new(backend).await;
    Migrator::up(&t.db, Some(position(10) as u32))
        .await
        .expect("up to m009");
    let now = Utc::now().timestamp();
    let day = 86_400;
    let (old, first, second) = (now - 40 * day, now - 10 * day, now - 2 * day);
    t.exec(
        "INSERT INTO users (email, stripe_customer_id, subscription_id, subscription_status)          VALUES ('a@x.test', 'cus_a', 'sub_a', 'past_due'),          ('b@x.test', 'cus_b', 'sub_b', 'past_due'), ('c@x.test', 'cus_c', 'sub_c', 'active')",
    )
    .await;
    t.exec(&format!(
        "INSERT INTO stripe_events (id, event_type, created, customer_id, subscription_id, status)          VALUES ('evt_1', 'customer.subscription.updated', {old}, 'cus_a', 'sub_a', 'past_due'),          ('evt_2', 'customer.subscription.updated', {}, 'cus_a', 'sub_a', 'active'),          ('evt_3', 'customer.subscription.updated', {second}, 'cus_a', 'sub_a', 'past_due'),          ('evt_4', 'customer.subscription.updated', {first}, 'cus_a', 'sub_a', 'past_due'),          ('evt_5', 'customer.subscription.updated', {first}, 'cus_c', 'sub_c', 'active')",
        old + day
    ))
    .await;
    // m010 backfills sub_a (past_due) and sub_c from the events, sub_b from the columns.
    Migrator::up(&t.db, Some(1)).await.expect("m010");
    let since = |table: &str, key: &str| {
        format!(
            "SELECT CASE WHEN past_due_since IS NULL THEN '-' ELSE 'set' END FROM {table}              WHERE {key}"
        )
    };
    Migrator::up(&t.db, None).await.expect("m011");
    let dated = entity::stripe_subscriptions::Entity::find_by_id("sub_a")
        .one(&t.db)
        .await
        .expect("read")
        .expect("sub_a");
    // The first past_due after the last active: `first`, not `old` nor `second`.
    assert_eq!(
        dated.past_due_since.map(|t| t.timestamp()),
        Some(first),
        "{dated:?}"
    );
    assert!(!dated.ends_at_period_end);
    let undated = entity::stripe_subscriptions::Entity::find_by_id("sub_b")
        .one(&t.db)
        .await
        .expect("read")
        .expect("sub_b");
    let undated_since = undated.past_due_since.map(|t| t.timestamp()).unwrap_or(0);
    assert!((undated_since - now).abs() < 600, "{undated:?}");
    assert_eq!(
        t.texts(&since("stripe_subscriptions", "subscription_id = 'sub_c'"))
            .await,
        vec!["-"]
    );
    let a = users::Entity::find()
        .all(&t.db)
        .await
        .expect("users")
        .into_iter()
        .map(|u| (u.email.clone(), u.past_due_since.map(|t| t.timestamp())))
        .collect::<Vec<_>>();
    assert!(a.contains(&("a@x.test".to_owned(), Some(first))), "{a:?}");
    assert!(a.contains(&("c@x.test".to_owned(), None)), "{a:?}");
    // a: past due for 10 days, beyond the grace; b: dated by the migration, within it.
    let tiers = t
        .texts("SELECT tier FROM user_tiers ORDER BY user_id")
        .await;
    assert_eq!(tiers, vec!["free", "pro", "pro"]);
}

/// Users who paid before m010: their customer is linked, each subscription gets its latest
/// snapshot from the stored events (whatever order they were stored in), and a subscription
/// no event describes comes from the user's columns.
async fn m010_backfills_customers_and_each_subscriptions_latest_snapshot(backend: Backend) {
    let t = TestDb::new(backend).await;
    Migrator::up(&t.db, Some(position(10) as u32))
        .await
        .expect("up to m010");
    t.exec(
        "INSERT INTO users (email, stripe_customer_id, subscription_id, subscription_status) \
         VALUES ('a@x.test', 'cus_a', 'sub_2', 'canceled'), \
         ('b@x.test', 'cus_b', 'sub_hand', 'active'), ('c@x.test', NULL, NULL, 'none')",
    )
    .await;
    t.exec(
        "INSERT INTO stripe_events (id, event_type, created, customer_id, subscription_id, status) \
         VALUES ('evt_3', 'customer.subscription.deleted', 300, 'cus_a', 'sub_2', 'canceled'), \
         ('evt_1', 'customer.subscription.created', 100, 'cus_a', 'sub_1', 'active'), \
         ('evt_2', 'customer.subscription.created', 200, 'cus_a', 'sub_2', 'active'), \
         ('evt_0', 'customer.subscription.created', 100, 'cus_a', 'sub_1', 'trialing'), \
         ('evt_4', 'customer.subscription.created', 50, 'cus_gone', 'sub_9', 'active'), \
         ('evt_5', 'customer.deleted', 60, 'cus_gone', NULL, NULL)",
    )
    .await;
    Migrator::up(&t.db, None).await.expect("m010");
    assert_eq!(
        t.texts(
            "SELECT concat(subscription_id, '|', customer_id, '|', status, '|', created, '|', \
             lifecycle_rank) FROM stripe_subscriptions ORDER BY subscription_id"
        )
        .await,
        vec![
            "sub_1|cus_a|active|100|2",
            "sub_2|cus_a|canceled|300|5",
            "sub_9|cus_gone|active|50|2",
            "sub_hand|cus_b|active|0|2",
        ]
    );
    assert_eq!(
        t.texts(
            "SELECT concat(c.customer_id, '|', coalesce(u.email, '-'), '|', \
             CASE WHEN c.deleted_at IS NULL THEN 'live' ELSE 'deleted' END) \
             FROM stripe_customers c LEFT JOIN users u ON u.id = c.user_id ORDER BY c.customer_id"
        )
        .await,
        vec![
            "cus_a|a@x.test|live",
            "cus_b|b@x.test|live",
            "cus_gone|-|deleted"
        ]
    );
    // sub_1 is still active: the user the columns showed as canceled is Pro.
    let tiers = t
        .texts("SELECT tier FROM user_tiers ORDER BY user_id")
        .await;
    assert_eq!(tiers, vec!["pro", "pro", "free"]);
}

/// m010 reads `stripe_events` by ranges of `customer_id` (5,000 events each). With three
/// events per customer, a range cut after a count of rows would split a customer (5,000 is
/// not a multiple of 3), and the part seen first would store an older snapshot that the
/// rest could not replace: every subscription must end at its latest event, every customer
/// once, every deleted customer marked.
async fn m010_backfills_every_range_of_events_whole(backend: Backend) {
    const CUSTOMERS: u32 = 4000;
    let t = TestDb::new(backend).await;
    Migrator::up(&t.db, Some(position(10) as u32))
        .await
        .expect("up to m010");
    // 1..=CUSTOMERS from digits (MariaDB stops a recursive CTE at 1,000 rows by default).
    let numbers = format!(
        "d(x) AS (SELECT 0 UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
         UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
         UNION ALL SELECT 8 UNION ALL SELECT 9), \
         n(i) AS (SELECT 1 + a.x + 10 * b.x + 100 * c.x + 1000 * e.x FROM d a, d b, d c, d e \
         WHERE a.x + 10 * b.x + 100 * c.x + 1000 * e.x < {CUSTOMERS})"
    );
    // The latest of each customer's three events is the middle one by insertion, so neither
    // the first nor the last row seen decides.
    t.exec(&format!(
        "INSERT INTO stripe_events (id, event_type, created, customer_id, subscription_id, status) \
         WITH {numbers}, \
         k(j, created, status) AS (SELECT 1, 100, 'trialing' UNION ALL SELECT 2, 300, 'past_due' \
         UNION ALL SELECT 3, 200, 'active') \
         SELECT concat('evt_', i, '_', j), 'customer.subscription.updated', created, \
         concat('cus_', i), concat('sub_', i), status FROM n, k"
    ))
    .await;
    t.exec(&format!(
        "INSERT INTO stripe_events (id, event_type, created, customer_id) \
         WITH {numbers} \
         SELECT concat('evt_del_', i), 'customer.deleted', 400, concat('cus_', i) \
         FROM n WHERE i % 7 = 0"
    ))
    .await;
    Migrator::up(&t.db, None).await.expect("m010");
    assert_eq!(
        t.texts(
            "SELECT concat(count(*), '|', sum(CASE WHEN status = 'past_due' AND created = 300 \
             THEN 1 ELSE 0 END)) FROM stripe_subscriptions"
        )
        .await
        .concat(),
        format!("{CUSTOMERS}|{CUSTOMERS}")
    );
    assert_eq!(
        t.texts(
            "SELECT concat(count(*), '|', count(DISTINCT customer_id), '|', \
             count(deleted_at)) FROM stripe_customers"
        )
        .await
        .concat(),
        format!("{CUSTOMERS}|{CUSTOMERS}|{}", CUSTOMERS / 7)
    );
}

mod postgres_only {
    use super::*;

    /// An interrupted CREATE INDEX CONCURRENTLY leaves an INVALID index; `up` rebuilds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalid_index_left_by_an_interrupted_build_is_rebuilt() {
        // Up to m006 only: m006's view step re-creates its own view, which m010 replaces.
        let t = TestDb::new(Backend::Postgres).await;
        Migrator::up(&t.db, Some(position(6) as u32 + 1))
            .await
            .expect("up to m006");
        let full = without_bookkeeping(snapshot(&t).await);
        t.exec(
            "UPDATE pg_index SET indisvalid = false \
             WHERE indexrelid = 'idx_users_stripe_customer'::regclass",
        )
        .await;
        t.exec("DELETE FROM seaql_migrations WHERE version = 'm006_billing_fields'")
            .await;
        Migrator::up(&t.db, Some(1)).await.expect("re-run up");
        assert_eq!(without_bookkeeping(snapshot(&t).await), full);
    }

    /// The "drop an INVALID leftover" steps touch only our table in our schema: an INVALID
    /// index of the same name elsewhere (here in another schema) survives a re-run of `up`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalid_index_of_the_same_name_elsewhere_is_left_alone() {
        // Up to m006 only, as above.
        let t = TestDb::new(Backend::Postgres).await;
        Migrator::up(&t.db, Some(position(6) as u32 + 1))
            .await
            .expect("up to m006");
        let full = without_bookkeeping(snapshot(&t).await);
        t.exec("CREATE SCHEMA archive").await;
        t.exec("CREATE TABLE archive.users (stripe_customer_id text)")
            .await;
        t.exec(
            "CREATE UNIQUE INDEX idx_users_stripe_customer ON archive.users (stripe_customer_id)",
        )
        .await;
        t.exec(
            "UPDATE pg_index SET indisvalid = false \
             WHERE indexrelid = 'archive.idx_users_stripe_customer'::regclass",
        )
        .await;
        t.exec("DELETE FROM seaql_migrations WHERE version = 'm006_billing_fields'")
            .await;
        Migrator::up(&t.db, Some(1)).await.expect("re-run up");
        assert_eq!(without_bookkeeping(snapshot(&t).await), full);
        assert_eq!(
            t.texts(
                "SELECT count(*) FROM pg_indexes \
                 WHERE schemaname = 'archive' AND indexname = 'idx_users_stripe_customer'"
            )
            .await,
            vec!["1"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_use_their_indexes() {
        let t = migrated(Backend::Postgres).await;
        t.exec(
            "INSERT INTO users (email, stripe_customer_id) \
             SELECT 'u' || g || '@x.test', 'cus_' || g FROM generate_series(1, 20000) g",
        )
        .await;
        t.exec(
            "INSERT INTO synced_sessions (user_id, client_id, device_name, payload, deleted_at) \
             SELECT id, 'c', 'd', 'p', CASE WHEN id % 100 = 0 THEN now() - interval '10 days' END \
             FROM users",
        )
        .await;
        t.exec("ANALYZE users").await;
        t.exec("ANALYZE synced_sessions").await;
        let by_customer = t
            .texts("EXPLAIN SELECT id FROM users WHERE stripe_customer_id = 'cus_42'")
            .await
            .join("\n");
        assert!(
            by_customer.contains("idx_users_stripe_customer"),
            "{by_customer}"
        );
        let purge = t
            .texts(
                "EXPLAIN SELECT id FROM synced_sessions \
                 WHERE deleted_at < now() - interval '7 days'",
            )
            .await
            .join("\n");
        assert!(purge.contains("idx_sessions_deleted_at"), "{purge}");
    }
}

mod mysql_only {
    use super::*;

    /// `ALTER TABLE users` as m006 wrote it on MySQL before its CHECK went inline: the
    /// columns in one statement, then `chk_subscription_status` by a table copy.
    const OLDER_M006_COLUMNS: &str = "ALTER TABLE `users` \
        ADD COLUMN `stripe_customer_id` varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin, \
        ADD COLUMN `subscription_id` varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin, \
        ADD COLUMN `subscription_status` varchar(50) NOT NULL DEFAULT 'none', \
        ADD COLUMN `current_period_end` timestamp NULL, ALGORITHM=INSTANT";

    fn status_checks(schema: &[String]) -> Vec<&str> {
        schema
            .iter()
            .filter(|line| line.starts_with("constraint|users|") && line.contains("|CHECK|"))
            .map(|line| line.split('|').nth(2).unwrap_or_default())
            .collect()
    }

    /// A database that an older m006 left half done (columns, no CHECK) gets the older
    /// `chk_subscription_status`; one the older m006 finished counts as done (every probe of
    /// today's m006 holds), and `down` restores m005's schema from it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn databases_migrated_by_the_older_m006_stay_done() {
        let t = TestDb::new(Backend::MySql).await;
        Migrator::up(&t.db, Some(position(6) as u32))
            .await
            .expect("up to m005");
        let m005 = without_bookkeeping(snapshot(&t).await);
        t.exec(OLDER_M006_COLUMNS).await;

        Migrator::up(&t.db, Some(1)).await.expect("m006 finishes");
        let schema = snapshot(&t).await;
        assert_eq!(status_checks(&schema), ["chk_subscription_status"]);
        let bad = "INSERT INTO users (email, subscription_status) VALUES ('a@x.test', 'ACTIVE')";
        assert!(
            t.db.execute_unprepared(bad).await.is_err(),
            "accepted ACTIVE"
        );

        let (_, steps) = planned(6, t.db_backend(), Direction::Up);
        for step in steps
            .iter()
            .filter(|s| s.done_when != migration::probe::Probe::Never)
        {
            assert!(
                step.done_when.holds(&t.db).await.expect("probe"),
                "not done: {}",
                step.summary
            );
        }

        Migrator::down(&t.db, Some(1)).await.expect("down");
        assert_eq!(without_bookkeeping(snapshot(&t).await), m005);
    }

    /// Today's m006 adds the CHECK inline, where MariaDB names it after the column, and adds
    /// no second one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn m006_adds_one_column_level_check() {
        let t = migrated(Backend::MySql).await;
        let schema = snapshot(&t).await;
        assert_eq!(status_checks(&schema), ["subscription_status"]);
        let level = t
            .texts(
                "SELECT level FROM information_schema.check_constraints \
                 WHERE constraint_schema = DATABASE() AND table_name = 'users'",
            )
            .await;
        assert_eq!(level, ["Column"]);
    }
}

/// m010's backfill while a request holds one user (the last) and the backfill must wait for
/// it: every other user stays writable (`FOR UPDATE`, the lock an API of before m010 takes
/// during a rolling deploy), and new users can sign up. The first m010 locked every linked
/// user until its one statement ended (the foreign key's check), and on MariaDB the gaps
/// after them, so both failed at once.
mod m010_backfill_holds_no_user_but_its_range {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::m010_backfill_holds_no_user_but_its_range(Backend::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        super::m010_backfill_holds_no_user_but_its_range(Backend::MySql).await
    }
}

async fn m010_backfill_holds_no_user_but_its_range(backend: Backend) {
    use sea_orm::TransactionTrait;
    const USERS: i64 = 3000;
    let t = TestDb::new(backend).await;
    Migrator::up(&t.db, Some(position(10) as u32))
        .await
        .expect("up to m009");
    t.exec(&format!(
        "INSERT INTO users (email, stripe_customer_id) {}",
        (1..=USERS)
            .map(|i| format!("SELECT 'u{i}@x.test', 'cus_{i}'"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    ))
    .await;
    let last = t.texts("SELECT max(id) FROM users").await.remove(0);
    let first = t.texts("SELECT min(id) FROM users").await.remove(0);
    // The tables first: creating a foreign key to `users` waits for every open transaction
    // on it (a metadata lock; lock-timed and retried), which is not what this test is about.
    let (name, steps) = planned(10, t.db_backend(), Direction::Up);
    let tables: Vec<_> = steps
        .into_iter()
        .take_while(|s| !s.summary.starts_with("backfill"))
        .collect();
    step::apply(&SchemaManager::new(&t.db), &name, Direction::Up, tables)
        .await
        .expect("create the tables");

    // A request holds the last user.
    let holder = support::connect(&t.url).await;
    let held = holder.begin().await.expect("begin");
    held.execute_unprepared(&format!(
        "SELECT id FROM users WHERE id = {last} FOR UPDATE"
    ))
    .await
    .expect("lock the last user");

    let db = t.db.clone();
    let migrating = tokio::spawn(async move { Migrator::up(&db, None).await });
    wait_for_a_lock_wait(&t, &migrating).await;

    // Meanwhile another user is locked by a request, and a new user signs up: neither may
    // wait for the migration (no wait at all: NOWAIT / a one-second lock wait on MariaDB).
    let other = support::connect(&t.url).await;
    let txn = other.begin().await.expect("begin");
    if backend == Backend::MySql {
        txn.execute_unprepared("SET SESSION innodb_lock_wait_timeout = 1")
            .await
            .expect("lock wait");
    }
    let nowait = match backend {
        Backend::Postgres => " NOWAIT",
        _ => "",
    };
    txn.execute_unprepared(&format!(
        "SELECT id FROM users WHERE id = {first} FOR UPDATE{nowait}"
    ))
    .await
    .expect("a user in an earlier range is not locked by the backfill");
    txn.execute_unprepared("INSERT INTO users (email) VALUES ('new@x.test')")
        .await
        .expect("a new user signs up while the backfill runs");
    txn.rollback().await.expect("rollback");

    held.rollback().await.expect("release the last user");
    migrating
        .await
        .expect("join")
        .expect("m010 finishes once the last user is released");
    assert_eq!(
        t.texts("SELECT count(*) FROM stripe_customers WHERE user_id IS NOT NULL")
            .await,
        vec![USERS.to_string()]
    );
}

/// An `ALTER TABLE users` while a webhook delivery holds its customer's row and is about to
/// lock its user (the API's lock order). On MariaDB the ALTER takes `users`' metadata lock and
/// then, to commit, waits for InnoDB locks on the tables that reference `users` (the
/// customer's row lock among them) for up to `innodb_lock_wait_timeout`, 50 s by default,
/// which the migrator's `lock_wait_timeout` does not bound; the delivery meanwhile waits for
/// the metadata lock. Before the migrator bounded that wait too, the delivery's user lock
/// timed out (5 s here) and every statement on `users` stalled with it; now the step gives up
/// after its second, is retried, and both finish. PostgreSQL: the same property, which its
/// `lock_timeout` always covered.
mod alter_of_users_does_not_wait_out_a_delivery {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::alter_of_users_does_not_wait_out_a_delivery(Backend::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        super::alter_of_users_does_not_wait_out_a_delivery(Backend::MySql).await
    }
}

async fn alter_of_users_does_not_wait_out_a_delivery(backend: Backend) {
    use sea_orm::TransactionTrait;
    let t = TestDb::new(backend).await;
    Migrator::up(&t.db, Some(position(12) as u32))
        .await
        .expect("up to m011");
    t.exec("INSERT INTO users (email, stripe_customer_id) VALUES ('u@x.test', 'cus_1')")
        .await;
    let user = t.texts("SELECT max(id) FROM users").await.remove(0);
    t.exec(&format!(
        "INSERT INTO stripe_customers (customer_id, user_id) VALUES ('cus_1', {user})"
    ))
    .await;

    // The delivery: its customer's row first.
    let delivery = support::connect(&t.url).await;
    let txn = delivery.begin().await.expect("begin");
    txn.execute_unprepared(
        "SELECT customer_id FROM stripe_customers WHERE customer_id = 'cus_1' FOR UPDATE",
    )
    .await
    .expect("lock the customer");

    let db = t.db.clone();
    let migrating = tokio::spawn(async move { Migrator::up(&db, None).await });
    // m012's ALTER of `users` under way (its first step alters stripe_subscriptions).
    let altering = match backend {
        Backend::Postgres => {
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE 'ALTER TABLE \"public\".\"users\"%' AND state = 'active'"
        }
        _ => {
            "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() \
             AND info LIKE 'ALTER TABLE `users`%'"
        }
    };
    let watcher = support::connect(&t.url).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let row = watcher
            .query_one_raw(sea_orm::Statement::from_string(t.db_backend(), altering))
            .await
            .unwrap_or_else(|e| panic!("{altering}: {e}"));
        if row
            .and_then(|r| r.try_get_by_index::<i64>(0).ok())
            .unwrap_or(0)
            > 0
        {
            break;
        }
        if migrating.is_finished() || std::time::Instant::now() > deadline {
            // PostgreSQL's ALTER is over in an instant, before it can be seen: nothing waits.
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Then its user, with a lock wait of 5 s.
    let timeout = match backend {
        Backend::Postgres => "SET LOCAL lock_timeout = '5s'",
        _ => "SET SESSION lock_wait_timeout = 5",
    };
    txn.execute_unprepared(timeout).await.expect("lock wait");
    let started = std::time::Instant::now();
    let locked = txn
        .execute_unprepared(&format!(
            "SELECT id FROM users WHERE id = {user} FOR UPDATE"
        ))
        .await;
    let waited = started.elapsed();
    txn.commit().await.expect("commit the delivery");
    assert!(
        locked.is_ok(),
        "the delivery's user lock failed after {waited:?} while the migration altered users: {locked:?}"
    );
    migrating
        .await
        .expect("join")
        .expect("m012 finishes once the delivery is done");
    assert_eq!(
        t.texts("SELECT count(*) FROM users WHERE price_grants_pro")
            .await,
        vec!["1".to_owned()]
    );
}

/// Polls until some session of the test's database waits for a row lock (within 60 s), and
/// fails at once with the migration's outcome if it ended instead.
async fn wait_for_a_lock_wait<T: std::fmt::Debug>(
    t: &TestDb,
    migrating: &tokio::task::JoinHandle<T>,
) {
    let sql = match t.backend {
        Backend::Postgres => {
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock'"
        }
        // MariaDB 10.11 does not list the backfill's waiting transaction in
        // information_schema.innodb_trx (seen: only the holder's, RUNNING), so: a backfill
        // statement of this database that has run for a second or more.
        _ => {
            "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() \
             AND info LIKE 'INSERT INTO `stripe_customers`%' AND time >= 1"
        }
    };
    // A connection of its own: the test database's pool is the migrator's, whose lock session
    // and backfill may hold every connection while it waits, which hid the wait until MariaDB's
    // 50 s innodb_lock_wait_timeout ended the migration.
    let watcher = support::connect(&t.url).await;
    let waiting = || async {
        let row = watcher
            .query_one_raw(sea_orm::Statement::from_string(t.db_backend(), sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.and_then(|row| row.try_get_by_index::<i64>(0).ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if waiting().await > 0 {
            return;
        }
        assert!(
            !migrating.is_finished(),
            "the migration ended without waiting"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never waited for the held user"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A database that applied one of m010's earlier plans (one `INSERT ... SELECT` per source;
/// then the linked customers alone by ranges) recorded that plan's checksum. Each reshaped
/// plan leaves the same schema and data, so `up` takes an earlier sum as applied and records
/// the new one; any other sum is still a changed migration.
async fn m010_applied_by_its_first_plan_is_not_a_changed_migration(backend: Backend) {
    use migration::checksum;
    let t = migrated(backend).await;
    let earlier_plans = match backend {
        Backend::Postgres => [
            "fcbcf11de45bb6998e1409b3fda00ac7affb6a1ebbb558db63e52acdb002267d",
            "3d873973a64177a4ff9c731eda647cae2d205688dd9336b992d06e312a211d34",
        ],
        Backend::MySql => [
            "52d083ff09b798bccf756b53cbdb00527cc4c48bc46795c206f2af2ef6452a2e",
            "5275d321dda25b2233fb2fcee807176cbb30933f6386213d4b52a1420c0d923b",
        ],
        Backend::Sqlite => [
            "4f5f9a7b2e04f18e37bbd6b01983fe0ece25f67ac8c6496aed5804761940f92a",
            "fb6d13cb10d7917e3c0fbd6b2b9fd44bf506910f70e977cef8629a33045d4ff5",
        ],
    };
    let current = checksum::of(
        migration::plan_of("m010_subscriptions").expect("m010 is planned"),
        t.db_backend(),
    );
    let set = |sum: &str| {
        format!(
            "UPDATE migration_checksums SET checksum = '{sum}' WHERE version = 'm010_subscriptions'"
        )
    };
    for earlier in earlier_plans {
        assert_ne!(current, earlier);
        t.exec(&set(earlier)).await;
        checksum::backfill_and_verify(&t.db)
            .await
            .expect("an earlier plan's sum is accepted");
        assert_eq!(
            t.texts(
                "SELECT checksum FROM migration_checksums WHERE version = 'm010_subscriptions'"
            )
            .await,
            vec![current.clone()]
        );
    }
    t.exec(&set(&"0".repeat(64))).await;
    let refused = checksum::backfill_and_verify(&t.db).await;
    assert!(
        matches!(refused, Err(migration::Error::ChecksumMismatch { .. })),
        "{refused:?}"
    );
}

/// m012 adds `price_grants_pro` TRUE to every row, the rule with no list: every user keeps
/// the tier they had, in the view and in Rust; a row set to FALSE then grants nothing.
async fn m012_keeps_every_stored_tier_until_the_list_is_applied(backend: Backend) {
    let t = TestDb::new(backend).await;
    Migrator::up(&t.db, Some(position(12) as u32))
        .await
        .expect("up to m011");
    t.exec(
        "INSERT INTO users (email, stripe_customer_id, subscription_id, subscription_status) \
         VALUES ('sub@x.test', 'cus_a', 'sub_a', 'active'), \
         ('own@x.test', NULL, NULL, 'active'), ('free@x.test', NULL, NULL, 'canceled')",
    )
    .await;
    t.exec(
        "INSERT INTO stripe_customers (customer_id, user_id, created_at) \
         SELECT 'cus_a', id, CURRENT_TIMESTAMP FROM users WHERE email = 'sub@x.test'",
    )
    .await;
    t.exec(
        "INSERT INTO stripe_subscriptions (subscription_id, customer_id, status, created, \
         lifecycle_rank, updated_at) VALUES ('sub_a', 'cus_a', 'active', 1, 2, CURRENT_TIMESTAMP)",
    )
    .await;
    let tiers = "SELECT concat(u.email, '=', v.tier) FROM users u \
                 JOIN user_tiers v ON v.user_id = u.id ORDER BY u.email";
    let before = t.texts(tiers).await;
    assert_eq!(
        before,
        ["free@x.test=free", "own@x.test=pro", "sub@x.test=pro"]
    );
    Migrator::up(&t.db, None).await.expect("m012");
    assert_eq!(t.texts(tiers).await, before);
    for user in users::Entity::find().all(&t.db).await.expect("users") {
        assert!(user.price_grants_pro, "{user:?}");
        let rust = user
            .billing_at(&t.db, Utc::now())
            .await
            .expect("billing")
            .tier;
        assert!(before.contains(&format!("{}={}", user.email, rust.as_str())));
    }
    // Written off the list, the subscription grants nothing; the user's own columns still do.
    t.exec("UPDATE stripe_subscriptions SET price_grants_pro = FALSE")
        .await;
    assert_eq!(
        t.texts(tiers).await,
        ["free@x.test=free", "own@x.test=pro", "sub@x.test=pro"]
    );
    t.exec("UPDATE users SET price_grants_pro = FALSE WHERE email = 'sub@x.test'")
        .await;
    assert_eq!(
        t.texts(tiers).await,
        ["free@x.test=free", "own@x.test=pro", "sub@x.test=free"]
    );
}
