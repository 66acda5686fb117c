//! `stripe-sync` applies a page of fetched subscriptions in one transaction
//! (`apply_fetched_subscriptions`). Money code with a second shape: it must leave exactly what
//! applying the page's subscriptions one at a time leaves (`apply_fetched_subscription`), and
//! answer the same for each. Two databases, the same history, one written page by page, the
//! other one subscription at a time; every billing column, snapshot and link compared.

use api::service::stripe_sync::{
    Grown, LinkOutcome, Outcome, apply_fetched_subscription, apply_fetched_subscriptions,
    customer_deleted, link_customer, link_customers, refresh_statistics,
};
use api::stripe::event::Snapshot;
use chrono::{DateTime, Utc};
use entity::SubscriptionStatus;

use crate::helpers::{TestApp, spawn_app};
use crate::support::{self, Backend};

crate::on_every_backend!(a_page_leaves_what_its_subscriptions_one_at_a_time_leave);
crate::on_every_backend!(a_page_of_links_leaves_what_linking_one_at_a_time_leaves);
crate::on_every_backend!(the_tables_a_run_grows_get_fresh_statistics);

const DAY: i64 = 86_400;

fn snapshot(customer: &str, subscription: &str, status: SubscriptionStatus, end: i64) -> Snapshot {
    Snapshot {
        customer: customer.to_owned(),
        subscription: subscription.to_owned(),
        status,
        stripe_status: status.as_str().to_owned(),
        current_period_end: DateTime::from_timestamp(end, 0),
        ends_at_period_end: false,
        unpaid_invoice_since: None,
        price_grants_pro: true,
    }
}

/// Users, with their links, as both databases start.
async fn users_and_links(app: &TestApp) {
    let db = &app.service_db();
    for (email, customers) in [
        ("one@example.com", &["cus_a", "cus_b"][..]),
        ("two@example.com", &["cus_c"]),
        ("three@example.com", &["cus_d"]),
        ("four@example.com", &[]),
    ] {
        app.user(email).await;
        let user = app.user_id(email).await;
        for customer in customers {
            link_customer(db, user, customer).await.expect("link");
        }
    }
}

/// `column` as text, `-` when NULL (concat_ws alone would skip it and shift the fields).
fn shown(column: &str) -> String {
    format!("CASE WHEN {column} IS NULL THEN '-' ELSE concat_ws('', {column}) END")
}

/// Everything a page may write, as text, without the instants of the writes themselves.
async fn billing_state(app: &TestApp) -> Vec<String> {
    let mut state = app
        .db
        .texts(&format!(
            "SELECT concat_ws('|', email, {}, {}, subscription_status, {}, {}, \
             ends_at_period_end, price_grants_pro) FROM users ORDER BY email",
            shown("stripe_customer_id"),
            shown("subscription_id"),
            shown("current_period_end"),
            shown("past_due_since"),
        ))
        .await;
    state.extend(
        app.db
            .texts(&format!(
                "SELECT concat_ws('|', subscription_id, customer_id, status, {}, created, \
                 lifecycle_rank, {}, ends_at_period_end, price_grants_pro) \
                 FROM stripe_subscriptions ORDER BY subscription_id",
                shown("current_period_end"),
                shown("past_due_since"),
            ))
            .await,
    );
    state.extend(
        app.db
            .texts(
                "SELECT concat_ws('|', c.customer_id, coalesce(u.email, '-'), \
                 CASE WHEN c.deleted_at IS NULL THEN 'live' ELSE 'deleted' END) \
                 FROM stripe_customers c LEFT JOIN users u ON u.id = c.user_id \
                 ORDER BY c.customer_id",
            )
            .await,
    );
    state
}

/// Every kind of write a page can hold, against a stored state set one subscription at a time
/// in both databases: a new subscription, one unchanged (only its key moves), one changed, a
/// past-due stretch that goes on into a new period (its start kept), one older than what is
/// stored (a later event), one older but of the same period whose failed invoice dates the
/// past-due stretch earlier, a renewal turned off and a price off the Pro list, a customer
/// deleted at Stripe, a customer no user has and one the database has never seen, two
/// customers of one user in one page, a subscription twice in one page, and a page of one.
async fn a_page_leaves_what_its_subscriptions_one_at_a_time_leave(backend: Backend) {
    use SubscriptionStatus::{Active, Canceled, PastDue, Trialing};
    let paged = spawn_app(backend).await;
    let single = spawn_app(backend).await;
    let t0 = Utc::now().timestamp() - 10 * DAY;
    let end = t0 + 20 * DAY;
    // Failed five days before the page's read: dates the stretch stored later earlier.
    let failed_earlier = Snapshot {
        unpaid_invoice_since: DateTime::from_timestamp(t0 - 5 * DAY, 0),
        ..snapshot("cus_d", "sub_d2", PastDue, end)
    };
    let renewal_off = Snapshot {
        ends_at_period_end: true,
        price_grants_pro: false,
        ..snapshot("cus_b", "sub_b1", Active, end + 5 * DAY)
    };
    let before = [
        (snapshot("cus_a", "sub_a1", Active, end), t0),
        (snapshot("cus_c", "sub_c1", PastDue, end), t0),
        (snapshot("cus_d", "sub_d1", Active, end), t0),
        (snapshot("cus_d", "sub_d2", PastDue, end), t0 + 500),
        (snapshot("cus_del", "sub_del", Active, end), t0),
        // A later read (or event) that a page read earlier must not roll back.
        (snapshot("cus_d", "sub_d1", Canceled, end), t0 + 1_000),
    ];
    let pages: Vec<(Vec<Snapshot>, i64)> = vec![
        (
            vec![
                snapshot("cus_a", "sub_a1", Active, end),
                snapshot("cus_a", "sub_a2", Trialing, end + 2 * DAY),
                snapshot("cus_b", "sub_b1", Active, end + 5 * DAY),
                snapshot("cus_c", "sub_c1", PastDue, end + 30 * DAY),
                snapshot("cus_d", "sub_d1", Active, end),
                snapshot("cus_x", "sub_x1", Active, end),
                failed_earlier,
                snapshot("cus_del", "sub_del", Canceled, end),
            ],
            t0 + 100,
        ),
        (
            vec![
                snapshot("cus_a", "sub_a2", Canceled, end + 2 * DAY),
                snapshot("cus_b", "sub_b1", Active, end + 5 * DAY),
                snapshot("cus_a", "sub_a2", Active, end + 40 * DAY),
            ],
            t0 + 200,
        ),
        (
            vec![snapshot("cus_c", "sub_c1", Active, end + 30 * DAY)],
            t0 + 300,
        ),
        (
            vec![
                snapshot("cus_a", "sub_a1", Canceled, end),
                renewal_off,
                snapshot("cus_c", "sub_c1", Active, end + 30 * DAY),
                snapshot("cus_x", "sub_x1", Canceled, end),
            ],
            t0 + 400,
        ),
    ];
    for app in [&paged, &single] {
        users_and_links(app).await;
        let db = &app.service_db();
        let four = app.user_id("four@example.com").await;
        link_customer(db, four, "cus_del").await.expect("link");
        for (snapshot, at) in &before {
            apply_fetched_subscription(db, snapshot, *at)
                .await
                .expect("stored before");
        }
        customer_deleted(db, "cus_del").await.expect("deleted");
    }
    let (paged_db, single_db) = (paged.service_db(), single.service_db());
    let mut answers = Vec::new();
    for (n, (page, at)) in pages.iter().enumerate() {
        let by_page = apply_fetched_subscriptions(&paged_db, page, *at)
            .await
            .unwrap_or_else(|e| panic!("page {n}: {e}"));
        let mut one_at_a_time = Vec::new();
        for snapshot in page {
            one_at_a_time.push(
                apply_fetched_subscription(&single_db, snapshot, *at)
                    .await
                    .unwrap_or_else(|e| panic!("page {n}, {}: {e}", snapshot.subscription)),
            );
        }
        assert_eq!(by_page, one_at_a_time, "page {n}: outcomes");
        answers.push(by_page);
        assert_eq!(
            billing_state(&paged).await,
            billing_state(&single).await,
            "page {n}: state"
        );
    }
    // The history did what it says: without this, two databases that both ignored the pages
    // would agree too.
    assert_eq!(
        answers[0],
        [
            Outcome::Duplicate,
            Outcome::Applied,
            Outcome::Applied,
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::UnknownCustomer,
            Outcome::Applied,
            Outcome::UnknownCustomer,
        ],
        "page 0"
    );
    assert_eq!(
        paged.billing_row("two@example.com").await,
        "cus_c|sub_c1|active|set"
    );
    assert_eq!(
        paged.billing_row("four@example.com").await,
        "-|-|canceled|-",
        "a deleted customer's subscription counts for nobody"
    );
}

/// The same for links (`link_customers` against `link_customer`): a new link, one already
/// made, a customer of another user, a user we do not have, a customer deleted at Stripe, a
/// customer the database has never seen, a user's second customer (while a subscription of
/// the first decides the tier, and while none does), and the two pages that must be written
/// one link after the other: a user twice, and a customer held in the column of another user
/// of the page (set before m010, with no link).
async fn a_page_of_links_leaves_what_linking_one_at_a_time_leaves(backend: Backend) {
    let paged = spawn_app(backend).await;
    let single = spawn_app(backend).await;
    let end = Utc::now().timestamp() + 20 * DAY;
    let emails = [
        "one@example.com",
        "two@example.com",
        "three@example.com",
        "four@example.com",
        "five@example.com",
        "six@example.com",
    ];
    let mut ids = Vec::new();
    for app in [&paged, &single] {
        users_and_links(app).await;
        for email in &emails[4..] {
            app.user(email).await;
        }
        let db = &app.service_db();
        apply_fetched_subscription(
            db,
            &snapshot("cus_c", "sub_c1", SubscriptionStatus::Active, end),
            end - 30 * DAY,
        )
        .await
        .expect("stored before");
        customer_deleted(db, "cus_gone").await.expect("deleted");
        app.db
            .exec("UPDATE users SET stripe_customer_id = 'cus_legacy' WHERE email = 'six@example.com'")
            .await;
        let mut these = Vec::new();
        for email in emails {
            these.push(app.user_id(email).await);
        }
        ids.push(these);
    }
    assert_eq!(ids[0], ids[1], "both databases number their users alike");
    let id = |n: usize| ids[0][n];
    let pages: Vec<Vec<(i64, String)>> = vec![
        vec![
            (id(3), "cus_new4".to_owned()),
            (id(0), "cus_a".to_owned()),
            (id(5), "cus_c".to_owned()),
            (999_999, "cus_nobody".to_owned()),
            (id(4), "cus_gone".to_owned()),
            (id(1), "cus_c2".to_owned()),
            (id(2), "cus_d2".to_owned()),
        ],
        vec![
            (id(4), "cus_new5".to_owned()),
            (id(4), "cus_new5b".to_owned()),
        ],
        vec![
            (id(5), "cus_new6".to_owned()),
            (id(4), "cus_legacy".to_owned()),
        ],
    ];
    let mut answers = Vec::new();
    for (n, page) in pages.iter().enumerate() {
        let by_page = link_customers(&paged.service_db(), page)
            .await
            .unwrap_or_else(|e| panic!("page {n}: {e}"));
        let mut one_at_a_time = Vec::new();
        for (user, customer) in page {
            one_at_a_time.push(
                link_customer(&single.service_db(), *user, customer)
                    .await
                    .unwrap_or_else(|e| panic!("page {n}, {customer}: {e}")),
            );
        }
        assert_eq!(by_page, one_at_a_time, "page {n}: outcomes");
        assert_eq!(
            billing_state(&paged).await,
            billing_state(&single).await,
            "page {n}: state"
        );
        answers.push(by_page);
    }
    assert_eq!(
        answers[0],
        [
            LinkOutcome::Linked,
            LinkOutcome::AlreadyLinked,
            LinkOutcome::LinkedToAnotherUser,
            LinkOutcome::UnknownUser,
            LinkOutcome::CustomerDeleted,
            LinkOutcome::Linked,
            LinkOutcome::Linked,
        ],
        "page 0"
    );
    // One after the other, `six`'s own link frees the customer in its column for `five`.
    assert_eq!(
        answers[2],
        [LinkOutcome::Linked, LinkOutcome::Linked],
        "page 2"
    );
    // A second customer does not take the column from the first one's subscription.
    assert_eq!(
        paged.billing_row("two@example.com").await,
        "cus_c|sub_c1|active|set"
    );
    assert_eq!(
        paged.billing_row("three@example.com").await,
        "cus_d2|-|none|-"
    );
    assert_eq!(
        paged.billing_row("five@example.com").await,
        "cus_legacy|-|none|-"
    );
}

/// `refresh_statistics` analyzes the tables a run grows on PostgreSQL (pages plan their
/// `IN (…)` reads from those statistics), and is a no-op elsewhere, without an error.
async fn the_tables_a_run_grows_get_fresh_statistics(backend: Backend) {
    let app = spawn_app(backend).await;
    let db = app.service_db();
    for table in [Grown::Customers, Grown::Subscriptions] {
        refresh_statistics(&db, table)
            .await
            .unwrap_or_else(|e| panic!("{table:?}: {e}"));
    }
    if backend == Backend::Postgres {
        let analyzed = app
            .db
            .texts(
                "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL \
                 AND relname IN ('stripe_customers', 'stripe_subscriptions') ORDER BY relname",
            )
            .await;
        assert_eq!(analyzed, ["stripe_customers", "stripe_subscriptions"]);
    }
}
