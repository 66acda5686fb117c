//! `billing stripe-sync` as users run it (the binary, against an in-process Stripe), on every
//! backend.

use std::process::Command;

use chrono::Utc;
use entity::users;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
};

use crate::fake_stripe::{FakeStripe, Fault, checkout_session, customer, invoice, subscription};
use crate::helpers::{TestApp, checkout, spawn_app};
use crate::support::{self, Backend};

crate::on_every_backend!(
    links_and_repairs_then_a_second_run_changes_nothing,
    rate_limits_and_server_errors_are_retried,
    a_rejected_key_changes_nothing_and_is_never_shown,
    one_customer_with_the_customer_flag,
    a_host_clock_two_days_ahead_does_not_outrank_a_later_cancel,
    a_payment_in_the_same_second_as_the_read_wins,
    a_newer_stored_state_that_differs_is_read_again_then_fails,
    checkout_sessions_link_a_returning_customer_and_an_orphan,
    a_key_of_another_mode_is_refused,
    a_key_of_another_mode_than_the_deployment_is_refused,
    customers_deleted_at_stripe_are_marked_deleted,
    a_past_due_stretch_first_seen_by_a_sync_starts_at_the_failed_invoice,
    a_stretch_left_past_due_starts_at_the_oldest_failed_invoice_of_its_run,
    its_progress_is_served_on_metrics_addr_while_it_runs,
    a_changed_pro_price_list_is_applied_by_the_next_run,
    concurrent_writes_end_as_one_at_a_time,
    a_write_that_fails_loses_no_other,
    a_run_stopped_by_an_error_shows_the_writes_it_made,
    a_closed_stderr_gets_no_panic,
);

// PostgreSQL and MariaDB: row locks with a timeout, and writes in flight together (SQLite's
// pool has one connection, so a run writes one at a time there).
crate::on_row_locking_backends!(a_lock_timeout_between_its_own_writes_is_retried);

const KEY: &str = "sk_test_51SyncKeyThatMustNeverBePrinted";

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Output {
    /// The number before `what` in the summary line, e.g. `count("updated")`.
    fn count(&self, what: &str) -> u64 {
        let summary = self
            .stdout
            .lines()
            .find(|l| l.starts_with("stripe-sync: "))
            .unwrap_or_else(|| panic!("no summary on stdout: {}", self.stdout));
        count_in(summary, what)
    }

    /// The last counts stderr shows (a progress line).
    fn last_progress(&self) -> &str {
        self.stderr
            .lines()
            .rfind(|l| l.starts_with("stripe-sync: ") && l.contains(" subscription(s) seen: "))
            .unwrap_or_else(|| panic!("no progress on stderr: {}", self.stderr))
    }

    fn assert_key_not_shown(&self) {
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            assert!(!text.contains(KEY), "the key is in {name}: {text}");
            assert!(
                !text.contains("NeverBePrinted"),
                "part of the key in {name}"
            );
        }
    }
}

/// The number before `what` in a line of counts.
fn count_in(line: &str, what: &str) -> u64 {
    let words: Vec<&str> = line.split([' ', ',', ';', ':']).collect();
    let at = words
        .iter()
        .position(|w| *w == what)
        .unwrap_or_else(|| panic!("{what:?} not in {line}"));
    words[..at]
        .iter()
        .rev()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {line}"))
}

/// Runs `billing stripe-sync ARGS` on the app's database against `stripe`.
async fn stripe_sync(
    app: &TestApp,
    stripe: &FakeStripe,
    key: Option<&str>,
    args: &[&str],
) -> Output {
    stripe_sync_env(app, stripe, key, args, &[]).await
}

/// [`stripe_sync`] with more environment variables (a deployment's STRIPE_MODE, say).
async fn stripe_sync_env(
    app: &TestApp,
    stripe: &FakeStripe,
    key: Option<&str>,
    args: &[&str],
    vars: &[(&str, &str)],
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_billing"));
    command
        .arg("stripe-sync")
        .args(args)
        .envs(vars.iter().copied())
        .env("DATABASE_URL", &app.db.url)
        .env("STRIPE_API_BASE", &stripe.base)
        // The most verbose logging: the key must not show even there.
        .env("RUST_LOG", "trace,sqlx=warn")
        .env_remove("STRIPE_MAX_REQUESTS_PER_SEC");
    match key {
        Some(key) => command.env("STRIPE_API_KEY", key),
        None => command.env_remove("STRIPE_API_KEY"),
    };
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run billing stripe-sync");
    let output = Output {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    output.assert_key_not_shown();
    output
}

/// Every user row, and how many events the history holds.
async fn state(app: &TestApp) -> (Vec<users::Model>, String) {
    let users = users::Entity::find()
        .order_by_asc(users::Column::Id)
        .all(&app.db.db)
        .await
        .expect("users");
    let events = app.db.texts("SELECT count(*) FROM stripe_events").await;
    (users, events.join(""))
}

/// A user whose e-mail is stored as given (rows from before e-mails were lower-cased).
async fn raw_user(app: &TestApp, email: &str) {
    let now = Utc::now().fixed_offset();
    users::ActiveModel {
        email: Set(email.to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&app.db.db)
    .await
    .expect("insert user");
}

/// A user linked to `customer` the way checkout links them, with an active subscription.
async fn linked_user(app: &TestApp, email: &str, customer: &str, sub: &str) {
    linked_user_at(app, email, customer, sub, Utc::now().timestamp() - 86_400).await;
}

/// As [`linked_user`], with Stripe's events created at `then`.
async fn linked_user_at(app: &TestApp, email: &str, customer: &str, sub: &str, then: i64) {
    app.user(email).await;
    let uid = app.user_id(email).await;
    let (status, body) = app
        .deliver_event(&checkout(
            &format!("evt_co_{sub}"),
            then,
            uid,
            customer,
            sub,
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .deliver_event(&crate::helpers::subscription(
            &format!("evt_created_{sub}"),
            "created",
            then,
            (customer, sub),
            "active",
            then + 30 * 86_400,
            true,
        ))
        .await;
    assert_eq!(status, 200, "{body}");
}

fn requests_to<'a>(log: &'a [String], path: &str) -> Vec<&'a String> {
    log.iter()
        .filter(|r| r.split('?').next() == Some(&format!("GET {path}")))
        .collect()
}

async fn links_and_repairs_then_a_second_run_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 2).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;

    // Linked by checkout; the webhook that made it past_due was missed.
    linked_user(&app, "linked@example.com", "cus_linked", "sub_linked").await;
    stripe.add_customer(customer("cus_linked", Some("accounts@corp.example"), None));
    // A second customer with that user's e-mail: the user already has one, so not linked.
    stripe.add_customer(customer("cus_second", Some("Linked@example.com"), None));
    stripe.put_subscription(subscription(
        "sub_linked",
        "cus_linked",
        "past_due",
        period_end,
    ));
    // Named by metadata.user_id, whatever its e-mail says.
    app.user("meta@example.com").await;
    let meta = app.user_id("meta@example.com").await.to_string();
    stripe.add_customer(customer("cus_meta", Some("other@example.com"), Some(&meta)));
    stripe.put_subscription(subscription("sub_meta", "cus_meta", "active", period_end));
    // The one user and the one customer with this e-mail, in another case (beyond ASCII).
    app.user("éva@example.com").await;
    stripe.add_customer(customer("cus_eva", Some("ÉVA@Example.com"), None));
    stripe.put_subscription(subscription("sub_eva", "cus_eva", "trialing", period_end));
    // Canceled: only listed with status=all.
    app.user("gone@example.com").await;
    stripe.add_customer(customer("cus_gone", Some("Gone@Example.com"), None));
    stripe.put_subscription(subscription("sub_gone", "cus_gone", "canceled", period_end));
    // Two customers share an e-mail: neither is linked.
    app.user("dup@example.com").await;
    stripe.add_customer(customer("cus_dup1", Some("dup@example.com"), None));
    stripe.add_customer(customer("cus_dup2", Some("DUP@example.com"), None));
    stripe.put_subscription(subscription("sub_dup1", "cus_dup1", "active", period_end));
    // Two users share an e-mail but for its case: not linked. MariaDB's case-insensitive
    // collation keeps such rows out of its unique e-mail index in the first place.
    let twins = backend != Backend::MySql;
    if twins {
        raw_user(&app, "twin@example.com").await;
        raw_user(&app, "Twin@Example.com").await;
        stripe.add_customer(customer("cus_twin", Some("twin@example.com"), None));
    }
    // No user at all, and a metadata.user_id naming no user.
    stripe.add_customer(customer("cus_stranger", Some("nobody@example.com"), None));
    stripe.put_subscription(subscription(
        "sub_stranger",
        "cus_stranger",
        "active",
        period_end,
    ));
    stripe.add_customer(customer("cus_badmeta", None, Some("99999999")));

    let before = state(&app).await;
    let first = stripe_sync(&app, &stripe, Some(KEY), &["--link-by-email"]).await;
    // Two live subscriptions stay without a user (cus_dup1's, cus_stranger's): payers
    // without Pro, so the run fails and names them.
    assert!(!first.success, "{}\n{}", first.stdout, first.stderr);
    assert!(
        first
            .stdout
            .contains("live subscription, no user: cus_dup1, cus_stranger"),
        "{}",
        first.stdout
    );
    let twin = u64::from(twins);
    for (what, n) in [
        ("seen", 9 + twin),
        ("already", 1),
        ("metadata.user_id", 1),
        ("e-mail", 2),
        ("ambiguous", 3 + twin),
        ("unmatched", 2),
        ("updated", 4),
        ("unchanged", 0),
        ("skipped", 0),
        ("failed", 2),
    ] {
        assert_eq!(first.count(what), n, "{what}: {}", first.stdout);
    }
    for (email, row) in [
        ("linked@example.com", "cus_linked|sub_linked|past_due|set"),
        ("meta@example.com", "cus_meta|sub_meta|active|set"),
        ("éva@example.com", "cus_eva|sub_eva|trialing|set"),
        ("gone@example.com", "cus_gone|sub_gone|canceled|set"),
        ("dup@example.com", "-|-|none|-"),
    ] {
        assert_eq!(app.billing_row(email).await, row, "{email}");
    }
    if twins {
        for email in ["twin@example.com", "Twin@Example.com"] {
            assert_eq!(app.billing_row(email).await, "-|-|none|-", "{email}");
        }
    }
    for left in ["cus_dup1", "cus_dup2", "cus_second"] {
        assert!(first.stderr.contains(left), "{left}: {}", first.stderr);
    }
    assert!(
        first.stderr.contains("customer(s) seen"),
        "progress on stderr"
    );

    // Stripe read through its list endpoints only, 100 a page, every page followed; the
    // invoices of the one past-due subscription, to date its stretch.
    let log = stripe.take_log();
    let customers = requests_to(&log, "/v1/customers");
    let sessions = requests_to(&log, "/v1/checkout/sessions");
    let subscriptions = requests_to(&log, "/v1/subscriptions");
    let invoices = requests_to(&log, "/v1/invoices");
    assert_eq!(
        (customers.len(), sessions.len(), subscriptions.len()),
        (5, 1, 3),
        "{log:#?}"
    );
    assert_eq!(invoices.len(), 1, "{log:#?}");
    assert!(invoices[0].contains("subscription=sub_linked"), "{log:#?}");
    assert_eq!(
        log.len(),
        customers.len() + sessions.len() + subscriptions.len() + invoices.len(),
        "{log:#?}"
    );
    assert!(sessions[0].contains("status=complete"), "{log:#?}");
    assert!(log.iter().all(|r| r.contains("limit=100")), "{log:#?}");
    assert!(subscriptions.iter().all(|r| r.contains("status=all")));
    assert!(
        customers[1].contains("starting_after=cus_second"),
        "{log:#?}"
    );
    assert_ne!(state(&app).await, before);

    // Nothing changed at Stripe: nothing changes here, and the history does not grow.
    let settled = state(&app).await;
    let second = stripe_sync(&app, &stripe, Some(KEY), &["--link-by-email"]).await;
    assert!(!second.success, "{}", second.stderr);
    assert_eq!(state(&app).await, settled);
    for (what, n) in [
        ("already", 4),
        ("metadata.user_id", 0),
        ("e-mail", 0),
        ("updated", 0),
        ("unchanged", 4),
        ("failed", 2),
    ] {
        assert_eq!(second.count(what), n, "{what}: {}", second.stdout);
    }

    // The sync counts as of when it read Stripe: a webhook created later applies, one
    // created earlier (delivered late) does not roll it back.
    let now = Utc::now().timestamp();
    for (id, created, status) in [
        ("evt_later", now + 60, "unpaid"),
        ("evt_older", now - 3_600, "canceled"),
    ] {
        let event = crate::helpers::subscription(
            id,
            "updated",
            created,
            ("cus_meta", "sub_meta"),
            status,
            period_end,
            true,
        );
        assert_eq!(app.deliver_event(&event).await.0, 200);
    }
    assert_eq!(
        app.billing_row("meta@example.com").await,
        "cus_meta|sub_meta|unpaid|set"
    );
}

async fn rate_limits_and_server_errors_are_retried(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 100).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    linked_user(&app, "paid@example.com", "cus_paid", "sub_paid").await;
    stripe.add_customer(customer("cus_paid", Some("paid@example.com"), None));
    stripe.put_subscription(subscription("sub_paid", "cus_paid", "past_due", period_end));
    // A subscription that cannot be read fails alone; the others are still applied.
    let mut broken = subscription("sub_broken", "cus_paid", "active", period_end);
    broken["customer"] = serde_json::json!(42);
    stripe.put_subscription(broken);

    stripe.fail_next(Fault::new("/v1/customers", 429).header("retry-after", "1"));
    stripe.fail_next(Fault::new("/v1/subscriptions", 500));
    // Stripe-Should-Retry overrides the status: a 409 that says so is retried.
    stripe.fail_next(Fault::new("/v1/subscriptions", 409).header("stripe-should-retry", "true"));
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(!run.success, "a failed subscription makes the run fail");
    assert_eq!(run.count("updated"), 1, "{}", run.stdout);
    assert_eq!(run.count("failed"), 1, "{}", run.stdout);
    assert!(run.stderr.contains("sub_broken"), "{}", run.stderr);
    assert_eq!(
        app.billing_row("paid@example.com").await,
        "cus_paid|sub_paid|past_due|set"
    );
    let log = stripe.take_log();
    assert_eq!(requests_to(&log, "/v1/customers").len(), 2, "{log:#?}");
    assert_eq!(requests_to(&log, "/v1/subscriptions").len(), 3, "{log:#?}");

    // Stripe-Should-Retry: false is not retried, even on a 503.
    stripe.fail_next(Fault::new("/v1/customers", 503).header("stripe-should-retry", "false"));
    let before = state(&app).await;
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(!run.success);
    // One error line (at RUST_LOG=trace, a background task's trace may still follow it).
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains("503"),
        "{}",
        run.stderr
    );
    assert_eq!(stripe.take_log().len(), 1);
    assert_eq!(state(&app).await, before);
}

async fn a_rejected_key_changes_nothing_and_is_never_shown(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 2).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    linked_user(&app, "paid@example.com", "cus_paid", "sub_paid").await;
    app.user("new@example.com").await;
    stripe.add_customer(customer("cus_paid", Some("paid@example.com"), None));
    stripe.add_customer(customer("cus_new", Some("new@example.com"), None));
    stripe.put_subscription(subscription("sub_paid", "cus_paid", "canceled", period_end));
    stripe.put_subscription(subscription("sub_new", "cus_new", "active", period_end));
    let before = state(&app).await;

    // A wrong key (401), and a restricted key without the permission (403).
    let wrong = "sk_test_51WrongKeyNeverBePrinted";
    stripe.fail_next(Fault::new("/v1/customers", 403));
    for key in [KEY, wrong] {
        let run = stripe_sync(&app, &stripe, Some(key), &[]).await;
        assert!(!run.success);
        assert!(!run.stderr.contains(wrong), "{}", run.stderr);
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error"))
            .collect();
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        assert!(errors[0].contains("STRIPE_API_KEY"), "{}", errors[0]);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        assert_eq!(state(&app).await, before);
        assert_eq!(stripe.take_log().len(), 1, "not retried");
    }

    // No key: one line naming the variable, and Stripe is not asked.
    for key in [None, Some("")] {
        let run = stripe_sync(&app, &stripe, key, &[]).await;
        assert!(!run.success);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr.starts_with("error: STRIPE_API_KEY"),
            "{}",
            run.stderr
        );
    }
    assert!(stripe.take_log().is_empty());
    assert_eq!(state(&app).await, before);

    // With the right key, at the most verbose logging, the key is still not shown.
    let mut command = Command::new(env!("CARGO_BIN_EXE_billing"));
    command
        .args(["stripe-sync", "--help"])
        .env("STRIPE_API_KEY", KEY);
    let help = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("help");
    assert!(!String::from_utf8_lossy(&help.stdout).contains(KEY));
    let run = stripe_sync(&app, &stripe, Some(KEY), &["--link-by-email"]).await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.count("updated"), 2, "{}", run.stdout);
}

async fn one_customer_with_the_customer_flag(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 1).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    linked_user(&app, "a@example.com", "cus_a", "sub_a").await;
    linked_user(&app, "b@example.com", "cus_b", "sub_b").await;
    stripe.add_customer(customer("cus_a", Some("a@example.com"), None));
    stripe.add_customer(customer("cus_b", Some("b@example.com"), None));
    // Both changed at Stripe; cus_a has two subscriptions over two pages.
    stripe.put_subscription(subscription("sub_a", "cus_a", "canceled", period_end));
    stripe.put_subscription(subscription(
        "sub_a2",
        "cus_a",
        "canceled",
        period_end + 86_400,
    ));
    stripe.put_subscription(subscription("sub_b", "cus_b", "past_due", period_end));

    let run = stripe_sync(&app, &stripe, Some(KEY), &["--customer", "cus_a"]).await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.count("seen"), 1);
    assert_eq!(run.count("updated"), 2, "{}", run.stdout);
    assert_eq!(
        app.billing_row("a@example.com").await,
        "cus_a|sub_a2|canceled|set"
    );
    assert_eq!(
        app.billing_row("b@example.com").await,
        "cus_b|sub_b|active|set",
        "another customer is left alone"
    );
    let log = stripe.take_log();
    assert_eq!(log[0], "GET /v1/customers/cus_a", "{log:#?}");
    assert_eq!(log.len(), 3, "{log:#?}");
    for request in &log[1..] {
        assert!(
            request.starts_with("GET /v1/subscriptions?")
                && request.contains("customer=cus_a")
                && request.contains("status=all")
                && request.contains("limit=100"),
            "{log:#?}"
        );
    }

    // An unlinked customer is linked by its metadata.user_id.
    app.user("c@example.com").await;
    let c = app.user_id("c@example.com").await.to_string();
    stripe.add_customer(customer("cus_c", Some("c@example.com"), Some(&c)));
    stripe.put_subscription(subscription("sub_c", "cus_c", "active", period_end));
    let run = stripe_sync(&app, &stripe, Some(KEY), &["--customer", "cus_c"]).await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.count("metadata.user_id"), 1, "{}", run.stdout);
    assert_eq!(
        app.billing_row("c@example.com").await,
        "cus_c|sub_c|active|set"
    );

    // A customer Stripe does not have, and one that is not an id at all.
    stripe.take_log();
    let run = stripe_sync(&app, &stripe, Some(KEY), &["--customer", "cus_missing"]).await;
    assert!(!run.success);
    assert!(run.stderr.contains("No such customer"), "{}", run.stderr);
    let run = stripe_sync(
        &app,
        &stripe,
        Some(KEY),
        &["--customer", "cus_1/../charges"],
    )
    .await;
    assert!(!run.success);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert_eq!(stripe.take_log().len(), 1, "only cus_missing was asked for");
}

/// A customer with `email` and its one subscription, at Stripe.
fn at_stripe(
    stripe: &FakeStripe,
    (customer_id, email): (&str, &str),
    sub: &str,
    status: &str,
    end: i64,
) {
    stripe.add_customer(customer(customer_id, Some(email), None));
    stripe.put_subscription(subscription(sub, customer_id, status, end));
}

/// Delivers `customer.subscription.{kind}` for `(customer, sub)`, created at `created`; 200.
async fn deliver_subscription(
    app: &TestApp,
    id: &str,
    created: i64,
    (customer, sub): (&str, &str),
    status: &str,
    period_end: i64,
) {
    let kind = if status == "canceled" {
        "deleted"
    } else {
        "updated"
    };
    let event =
        crate::helpers::subscription(id, kind, created, (customer, sub), status, period_end, true);
    let (status, body) = app.deliver_event(&event).await;
    assert_eq!(status, 200, "{body}");
}

/// Issue 18: a sync from a host whose clock ran two days ahead keyed every subscription two
/// days into the future, so the customer's cancel, delivered next, changed nothing. Stripe's
/// `Date` orders the snapshot now; a host ahead of Stripe is modelled by Stripe's clock
/// behind the host's.
async fn a_host_clock_two_days_ahead_does_not_outrank_a_later_cancel(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 100).await;
    let stripe_now = Utc::now().timestamp() - 2 * 86_400;
    let period_end = stripe_now + 20 * 86_400;
    linked_user_at(
        &app,
        "pro@example.com",
        "cus_pro",
        "sub_pro",
        stripe_now - 86_400,
    )
    .await;
    at_stripe(
        &stripe,
        ("cus_pro", "pro@example.com"),
        "sub_pro",
        "active",
        period_end,
    );
    stripe.set_clock(Some(stripe_now));
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.count("updated"), 1, "the period end: {}", run.stdout);

    // A minute later by Stripe's clock, the customer cancels.
    let canceled = subscription("sub_pro", "cus_pro", "canceled", period_end);
    stripe.put_subscription(canceled);
    deliver_subscription(
        &app,
        "evt_cancel",
        stripe_now + 60,
        ("cus_pro", "sub_pro"),
        "canceled",
        period_end,
    )
    .await;
    assert_eq!(
        app.billing_row("pro@example.com").await,
        "cus_pro|sub_pro|canceled|set",
        "the cancel, created after the sync read Stripe, wins"
    );
    stripe.set_clock(Some(stripe_now + 120));
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.count("unchanged"), 1, "{}", run.stdout);
    assert_eq!(
        app.billing_row("pro@example.com").await,
        "cus_pro|sub_pro|canceled|set"
    );
}

/// Issue 18: with no skew at all, a payment in the same second as the sync's read
/// (`unpaid` → `active`) lost to the fetched snapshot. Events created at or after the read,
/// by Stripe's clock, win.
async fn a_payment_in_the_same_second_as_the_read_wins(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 100).await;
    let now = Utc::now().timestamp();
    let period_end = now + 20 * 86_400;
    linked_user_at(
        &app,
        "late@example.com",
        "cus_late",
        "sub_late",
        now - 86_400,
    )
    .await;
    deliver_subscription(
        &app,
        "evt_unpaid",
        now - 3_600,
        ("cus_late", "sub_late"),
        "unpaid",
        period_end,
    )
    .await;
    at_stripe(
        &stripe,
        ("cus_late", "late@example.com"),
        "sub_late",
        "unpaid",
        period_end,
    );
    stripe.set_clock(Some(now));
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);

    // The payment went through in the second Stripe answered the sync.
    deliver_subscription(
        &app,
        "evt_paid",
        now,
        ("cus_late", "sub_late"),
        "active",
        period_end,
    )
    .await;
    assert_eq!(
        app.billing_row("late@example.com").await,
        "cus_late|sub_late|active|set"
    );
}

/// Issue 18: a stored state that differs from Stripe's but is dated later (here one dated a
/// day ahead, as a host clock running ahead wrote them) was counted `unchanged`, exit 0. It
/// is read again, and, still differing, counted as a failure.
async fn a_newer_stored_state_that_differs_is_read_again_then_fails(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 100).await;
    let now = Utc::now().timestamp();
    let period_end = now + 20 * 86_400;
    linked_user(&app, "ahead@example.com", "cus_ahead", "sub_ahead").await;
    deliver_subscription(
        &app,
        "evt_ahead",
        now + 86_400,
        ("cus_ahead", "sub_ahead"),
        "active",
        period_end,
    )
    .await;
    at_stripe(
        &stripe,
        ("cus_ahead", "ahead@example.com"),
        "sub_ahead",
        "canceled",
        period_end,
    );
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(!run.success, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.count("unchanged"), 0, "{}", run.stdout);
    assert_eq!(run.count("failed"), 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("sub_ahead") && run.stderr.contains("differs"),
        "{}",
        run.stderr
    );
    let log = stripe.take_log();
    assert_eq!(
        requests_to(&log, "/v1/subscriptions/sub_ahead").len(),
        1,
        "read again once: {log:#?}"
    );
}

/// Issue 18: the user's first customer (cus_1) canceled long ago; they paid again through a
/// second Checkout (cus_2) while the webhook endpoint was down. And a user orphaned before
/// m010: their first customer's subscription is still paid, the user points at the newer
/// one. Their completed Checkout Sessions link both; a payer no session or metadata names
/// fails the run, by name.
async fn checkout_sessions_link_a_returning_customer_and_an_orphan(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 1).await;
    let now = Utc::now().timestamp();
    let long_ago = now - 400 * 86_400;
    let period_end = now + 20 * 86_400;

    linked_user_at(&app, "back@example.com", "cus_1", "sub_1", long_ago).await;
    deliver_subscription(
        &app,
        "evt_sub_1_canceled",
        long_ago + 30 * 86_400,
        ("cus_1", "sub_1"),
        "canceled",
        long_ago + 30 * 86_400,
    )
    .await;
    let back = app.user_id("back@example.com").await.to_string();
    stripe.add_customer(customer("cus_1", Some("back@example.com"), None));
    stripe.add_customer(customer("cus_2", Some("back@example.com"), None));
    stripe.put_subscription(subscription(
        "sub_1",
        "cus_1",
        "canceled",
        long_ago + 30 * 86_400,
    ));
    stripe.put_subscription(subscription("sub_2", "cus_2", "active", period_end));
    stripe.add_checkout_session(checkout_session("cs_1", &back, "cus_1", "sub_1"));
    stripe.add_checkout_session(checkout_session("cs_2", &back, "cus_2", "sub_2"));

    // The orphan: its paid subscription's customer is held, linked to no one.
    deliver_subscription(
        &app,
        "evt_old_created",
        long_ago,
        ("cus_old", "sub_old"),
        "active",
        period_end,
    )
    .await;
    linked_user_at(
        &app,
        "orphan@example.com",
        "cus_new",
        "sub_new",
        long_ago + 60,
    )
    .await;
    deliver_subscription(
        &app,
        "evt_new_canceled",
        long_ago + 120,
        ("cus_new", "sub_new"),
        "canceled",
        long_ago + 120,
    )
    .await;
    let orphan = app.user_id("orphan@example.com").await.to_string();
    assert_eq!(
        app.billing_row("orphan@example.com").await,
        "cus_new|sub_new|canceled|set"
    );
    stripe.add_customer(customer("cus_old", Some("orphan@example.com"), None));
    stripe.add_customer(customer("cus_new", Some("orphan@example.com"), None));
    stripe.put_subscription(subscription("sub_old", "cus_old", "active", period_end));
    stripe.put_subscription(subscription(
        "sub_new",
        "cus_new",
        "canceled",
        long_ago + 120,
    ));
    stripe.add_checkout_session(checkout_session("cs_old", &orphan, "cus_old", "sub_old"));
    stripe.add_checkout_session(checkout_session("cs_new", &orphan, "cus_new", "sub_new"));

    // A session still open says nothing; a payer nothing names.
    let mut open = checkout_session("cs_open", &back, "cus_stray", "sub_stray");
    open["status"] = serde_json::json!("open");
    stripe.add_checkout_session(open);
    stripe.add_customer(customer("cus_stray", Some("back@example.com"), None));
    stripe.put_subscription(subscription(
        "sub_stray",
        "cus_stray",
        "trialing",
        period_end,
    ));

    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert_eq!(
        app.billing_row("back@example.com").await,
        "cus_2|sub_2|active|set",
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(
        app.billing_row("orphan@example.com").await,
        "cus_old|sub_old|active|set"
    );
    assert!(!run.success, "{}", run.stdout);
    assert_eq!(run.count("checkout"), 2, "{}", run.stdout);
    assert_eq!(run.count("e-mail"), 0, "not without --link-by-email");
    assert_eq!(run.count("failed"), 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("live subscription, no user: cus_stray"),
        "{}",
        run.stdout
    );
    let log = stripe.take_log();
    let sessions = requests_to(&log, "/v1/checkout/sessions");
    assert!(sessions.len() > 1, "every page followed: {log:#?}");
    assert!(
        sessions.iter().all(|r| r.contains("status=complete")),
        "{log:#?}"
    );

    // The same customer alone, with --customer, is linked by its session too.
    let run = stripe_sync(&app, &stripe, Some(KEY), &["--customer", "cus_stray"]).await;
    assert!(!run.success, "still unlinked: {}", run.stdout);
    assert!(run.stdout.contains("no user: cus_stray"), "{}", run.stdout);
}

/// Issue 18: a key of the other mode than the data Stripe returns is refused, nothing
/// written; a key that names no mode is refused before Stripe is asked.
async fn a_key_of_another_mode_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let live_key = "sk_live_51SyncKeyThatMustNeverBePrinted";
    let stripe = FakeStripe::start(live_key, 100).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    linked_user(&app, "paid@example.com", "cus_paid", "sub_paid").await;
    // The fake's objects are test-mode objects (`livemode: false`).
    stripe.add_customer(customer("cus_paid", Some("paid@example.com"), None));
    stripe.put_subscription(subscription("sub_paid", "cus_paid", "canceled", period_end));
    let before = state(&app).await;
    let run = stripe_sync(&app, &stripe, Some(live_key), &[]).await;
    assert!(!run.success, "{}", run.stdout);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("test mode") && errors[0].contains("live-mode key"),
        "{}",
        errors[0]
    );
    assert_eq!(state(&app).await, before);
    assert!(!run.stdout.contains(live_key));

    stripe.take_log();
    let run = stripe_sync(&app, &stripe, Some("sk_51NoModeInThisKey"), &[]).await;
    assert!(!run.success);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("sk_test_"), "{}", run.stderr);
    assert!(stripe.take_log().is_empty(), "Stripe not asked");
}

/// Stripe lists no deleted customer: stripe-sync asks for the ones it holds that the list no
/// longer shows, and marks those Stripe answers `deleted: true` as `customer.deleted` would.
async fn customers_deleted_at_stripe_are_marked_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 100).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    linked_user(&app, "gone@example.com", "cus_gone", "sub_gone").await;
    linked_user(&app, "one@example.com", "cus_one", "sub_one").await;
    linked_user(&app, "kept@example.com", "cus_kept", "sub_kept").await;
    for id in ["cus_gone", "cus_one", "cus_kept"] {
        stripe.add_customer(customer(id, None, None));
    }
    stripe.put_subscription(subscription("sub_kept", "cus_kept", "active", period_end));
    // Deleting a customer cancels its subscriptions at once.
    for (id, sub) in [("cus_gone", "sub_gone"), ("cus_one", "sub_one")] {
        stripe.delete_customer(id);
        stripe.put_subscription(subscription(sub, id, "canceled", period_end));
    }
    let deleted = || async {
        app.db
            .texts(
                "SELECT customer_id FROM stripe_customers WHERE deleted_at IS NOT NULL \
                 ORDER BY customer_id",
            )
            .await
            .join(",")
    };
    let run = stripe_sync(&app, &stripe, Some(KEY), &["--customer", "cus_one"]).await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(deleted().await, "cus_one");
    // Counted once: deleted, not also left alone.
    assert_eq!(run.count("deleted"), 1, "{}", run.stdout);
    assert_eq!(run.count("unmatched"), 0, "{}", run.stdout);
    // Marked before: this run marks nothing, so it counts nothing deleted.
    let run = stripe_sync(&app, &stripe, Some(KEY), &["--customer", "cus_one"]).await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.count("deleted"), 0, "{}", run.stdout);
    assert_eq!(run.count("unmatched"), 1, "{}", run.stdout);
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.count("deleted"), 1, "{}", run.stdout);
    assert_eq!(deleted().await, "cus_gone,cus_one");
    assert_eq!(
        app.billing_row("gone@example.com").await,
        "-|-|canceled|-",
        "no live customer left"
    );
    assert_eq!(
        app.billing_row("kept@example.com").await,
        "cus_kept|sub_kept|active|set"
    );
    let log = stripe.take_log();
    assert_eq!(
        requests_to(&log, "/v1/customers/cus_gone").len(),
        1,
        "{log:#?}"
    );
    assert!(requests_to(&log, "/v1/customers/cus_kept").is_empty());
    // Known deleted: not asked again.
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.count("deleted"), 0, "{}", run.stdout);
}

/// Issue 18: stripe-sync refuses a key of another mode than the deployment's STRIPE_MODE
/// (`--stripe-mode`), before Stripe or the database is touched: the server would ignore that
/// mode's events, and the sync would write that mode's subscriptions over this one's.
async fn a_key_of_another_mode_than_the_deployment_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let live_key = "sk_live_51SyncKeyThatMustNeverBePrinted";
    let stripe = FakeStripe::start(live_key, 100).await;
    linked_user(&app, "paid@example.com", "cus_paid", "sub_paid").await;
    let before = state(&app).await;
    let by_flag = stripe_sync(&app, &stripe, Some(live_key), &["--stripe-mode", "test"]).await;
    // The same setting from the environment, as a deployment sets it.
    let by_env = stripe_sync_env(
        &app,
        &stripe,
        Some(live_key),
        &[],
        &[("STRIPE_MODE", "test")],
    )
    .await;
    for run in [by_flag, by_env] {
        assert!(!run.success, "{}", run.stdout);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr
                .contains("STRIPE_MODE is test but STRIPE_API_KEY is a live key"),
            "{}",
            run.stderr
        );
    }
    assert!(stripe.take_log().is_empty(), "Stripe not asked");
    assert_eq!(state(&app).await, before);
    // The same key with the deployment's own mode reads Stripe.
    let run = stripe_sync_env(
        &app,
        &stripe,
        Some(live_key),
        &[],
        &[("STRIPE_MODE", "live")],
    )
    .await;
    assert!(!stripe.take_log().is_empty(), "{}", run.stderr);
}

/// Issue 18: a past-due stretch whose events were all lost is first seen by stripe-sync. Its
/// grace counts from the failed renewal invoice's finalization (its payment is tried right
/// after: `status_transitions.finalized_at`), read through `expand[]=data.latest_invoice`,
/// not from the run: a renewal that failed 9 days ago is Free now, not Pro for 7 more days.
async fn a_past_due_stretch_first_seen_by_a_sync_starts_at_the_failed_invoice(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 100).await;
    let now = Utc::now().timestamp();
    let renewed = now - 9 * 86_400;
    linked_user_at(
        &app,
        "due@example.com",
        "cus_due",
        "sub_due",
        renewed - 30 * 86_400,
    )
    .await;
    let finalized = renewed + 3_600;
    let mut sub = subscription("sub_due", "cus_due", "past_due", renewed + 30 * 86_400);
    sub["latest_invoice"] = serde_json::json!({
        "id": "in_renewal", "object": "invoice", "customer": "cus_due", "status": "open",
        "created": renewed, "billing_reason": "subscription_cycle",
        "attempt_count": 3, "attempted": true, "livemode": false,
        "status_transitions": {"finalized_at": finalized, "paid_at": null,
                               "voided_at": null, "marked_uncollectible_at": null}
    });
    stripe.add_customer(customer("cus_due", Some("due@example.com"), None));
    stripe.put_subscription(sub);
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    assert!(
        requests_to(&stripe.take_log(), "/v1/subscriptions")
            .iter()
            .all(|r| r.contains("expand")),
        "the listing asks for the latest invoice"
    );
    let user = users::Entity::find()
        .filter(users::Column::Email.eq("due@example.com"))
        .one(&app.db.db)
        .await
        .expect("user")
        .expect("the user");
    assert_eq!(user.subscription_status, "past_due");
    assert_eq!(
        user.past_due_since.map(|t| t.timestamp()),
        Some(finalized),
        "the grace starts at the failed invoice, not at the sync"
    );
    let tier = user.tier_at(&app.db.db, Utc::now()).await.expect("tier");
    assert_eq!(tier, entity::Tier::Free);
}

/// Issue 18's open gap (seed 0x12ece14ca31fe351): with dunning set to leave subscriptions past
/// due, the invoice whose retries ran out stays open and the next period's fails too; when
/// the event that first said `past_due` was lost, the latest invoice dates the stretch a
/// period late. stripe-sync reads the subscription's invoices (newest first, two a page here)
/// back to the last paid one: the stretch began at the oldest failed invoice after it. A paid
/// invoice ends an earlier stretch, however unpaid the invoices before it are.
async fn a_stretch_left_past_due_starts_at_the_oldest_failed_invoice_of_its_run(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 2).await;
    let now = Utc::now().timestamp();
    let day = 86_400;
    let latest = now - 5 * day;
    for (who, older) in [("left", ["paid", "open"]), ("repaid", ["open", "paid"])] {
        let (cus, sub) = (format!("cus_{who}"), format!("sub_{who}"));
        let email = format!("{who}@example.com");
        linked_user_at(&app, &email, &cus, &sub, now - 100 * day).await;
        stripe.add_customer(customer(&cus, Some(&email), None));
        let ids = [0, 1, 2].map(|n| format!("in_{who}_{n}"));
        let attempts = |status| if status == "paid" { 1 } else { 8 };
        for (n, status) in older.into_iter().enumerate() {
            let created = now - (65 - 30 * n as i64) * day;
            let inv = invoice(&ids[n], (&cus, &sub), status, attempts(status), created);
            stripe.put_invoice(inv);
        }
        let last = invoice(&ids[2], (&cus, &sub), "open", 1, latest);
        stripe.put_invoice(last.clone());
        let mut object = subscription(&sub, &cus, "past_due", latest + 30 * day);
        object["latest_invoice"] = last;
        stripe.put_subscription(object);
    }
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    let log = stripe.take_log();
    let listed = requests_to(&log, "/v1/invoices");
    assert!(
        listed.iter().any(|r| r.contains("subscription=sub_left")),
        "{log:?}"
    );
    for (who, since, tier) in [
        // The run: in_left_2 and in_left_1 (on the next page), ended by the paid in_left_0.
        ("left", now - 35 * day + 3_600, entity::Tier::Free),
        // in_repaid_1 was paid: in_repaid_0 belongs to an earlier stretch.
        ("repaid", latest + 3_600, entity::Tier::Pro),
    ] {
        let user = users::Entity::find()
            .filter(users::Column::Email.eq(format!("{who}@example.com")))
            .one(&app.db.db)
            .await
            .expect("user")
            .expect("the user");
        assert_eq!(user.subscription_status, "past_due", "{who}");
        assert_eq!(
            user.past_due_since.map(|t| t.timestamp()),
            Some(since),
            "{who}: the stretch's first failed charge"
        );
        let at = user.tier_at(&app.db.db, Utc::now()).await.expect("tier");
        assert_eq!(at, tier, "{who}");
    }
}

/// With METRICS_ADDR, the run serves its tally while it runs (here during a 2 s Retry-After
/// before the subscriptions are read) and closes the listener when it ends.
async fn its_progress_is_served_on_metrics_addr_while_it_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 100).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    linked_user(&app, "paid@example.com", "cus_paid", "sub_paid").await;
    stripe.add_customer(customer("cus_paid", Some("paid@example.com"), None));
    stripe.put_subscription(subscription("sub_paid", "cus_paid", "active", period_end));
    stripe.fail_next(Fault::new("/v1/subscriptions", 429).header("retry-after", "2"));
    // A free port, released for the run to bind.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let url = format!("http://{addr}/metrics");
    let seen = "billing_stripe_sync_progress{count=\"customers_seen\"} 1";
    let scrape = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(response) = reqwest::get(&url).await {
                let text = response.text().await.unwrap_or_default();
                if text.contains(seen) {
                    return text;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        String::new()
    };
    let vars = [("METRICS_ADDR", addr.as_str())];
    let (run, scraped) = tokio::join!(
        stripe_sync_env(&app, &stripe, Some(KEY), &[], &vars),
        scrape
    );
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    assert!(
        scraped.contains(seen),
        "no progress scraped; run said:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("metrics on http://{addr}/metrics")),
        "{}",
        run.stderr
    );
    assert!(
        reqwest::get(&url).await.is_err(),
        "the listener outlived the run"
    );
}

/// `PRO_PRICE_IDS` changed: rows keep the flag they were written with until `stripe-sync`
/// re-reads every subscription and rewrites it, counting it `updated` (a changed flag is a
/// changed state); a second run with the same list changes nothing.
async fn a_changed_pro_price_list_is_applied_by_the_next_run(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 2).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    // Stored by a webhook with no list: Pro.
    linked_user(&app, "ann@example.com", "cus_ann", "sub_ann").await;
    stripe.add_customer(customer("cus_ann", Some("ann@example.com"), None));
    // Its one item: price_pro_monthly of prod_pro.
    stripe.put_subscription(subscription("sub_ann", "cus_ann", "active", period_end));
    let view = || async {
        app.db
            .texts(
                "SELECT concat(v.tier, '|', CASE WHEN s.price_grants_pro THEN 'listed' \
                 ELSE 'unlisted' END) FROM user_tiers v JOIN users u ON u.id = v.user_id \
                 JOIN stripe_subscriptions s ON s.subscription_id = 'sub_ann' \
                 WHERE u.email = 'ann@example.com'",
            )
            .await
            .join("")
    };
    assert_eq!(view().await, "pro|listed");
    let user_tier = || async {
        let user = users::Entity::find()
            .filter(users::Column::Email.eq("ann@example.com"))
            .one(&app.db.db)
            .await
            .expect("read")
            .expect("ann");
        let tier = user.tier(&app.db.db).await.expect("tier");
        (
            tier.as_str().to_owned(),
            user.subscription_status,
            user.price_grants_pro,
        )
    };
    let start = Utc::now().timestamp();
    for (run, (list, updated, unchanged, expected, flag)) in [
        // Another price on the list: not Pro any more; the user's columns follow.
        ("price_1Other", 1, 0, "free|unlisted", false),
        ("price_1Other", 0, 1, "free|unlisted", false),
        // The product listed: Pro again.
        ("prod_pro, price_1Other", 1, 0, "pro|listed", true),
        ("prod_pro", 0, 1, "pro|listed", true),
        ("", 0, 1, "pro|listed", true),
    ]
    .into_iter()
    .enumerate()
    {
        // Each run a minute after the last by Stripe's clock, as runs are: one in the same
        // second as the last would be no newer than what it stored.
        stripe.set_clock(Some(start + 60 * (run as i64 + 1)));
        let run = stripe_sync_env(&app, &stripe, Some(KEY), &[], &[("PRO_PRICE_IDS", list)]).await;
        assert!(run.success, "{list:?}: {}\n{}", run.stdout, run.stderr);
        assert_eq!(run.count("updated"), updated, "{list:?}: {}", run.stdout);
        assert_eq!(
            run.count("unchanged"),
            unchanged,
            "{list:?}: {}",
            run.stdout
        );
        assert_eq!(view().await, expected, "{list:?}");
        assert_eq!(
            user_tier().await,
            (
                expected[..expected.find('|').unwrap_or(0)].to_owned(),
                "active".to_owned(),
                flag
            ),
            "{list:?}"
        );
    }
}

/// Records, at every write of a subscription or a customer, how many write transactions are
/// open on the database (the writer's own included), each write made 20 ms longer so that
/// writes in flight together overlap for certain. `None` on SQLite, which writes one at a
/// time and cannot tell.
async fn log_overlapping_writes(app: &TestApp, backend: Backend) {
    let statements: &[&str] = match backend {
        Backend::Postgres => &[
            "CREATE TABLE sync_overlap (n BIGINT NOT NULL)",
            // pg_stat_activity is a snapshot per transaction unless cleared. A transaction
            // has an xid once it has written or locked a row: a sync write, after locking its
            // customer.
            "CREATE FUNCTION record_overlap() RETURNS trigger AS $$ BEGIN \
             PERFORM pg_sleep(0.02); PERFORM pg_stat_clear_snapshot(); \
             INSERT INTO sync_overlap SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND backend_xid IS NOT NULL; \
             RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER overlap_subscriptions BEFORE INSERT OR UPDATE ON stripe_subscriptions \
             FOR EACH ROW EXECUTE FUNCTION record_overlap()",
            "CREATE TRIGGER overlap_customers BEFORE UPDATE ON stripe_customers \
             FOR EACH ROW EXECUTE FUNCTION record_overlap()",
        ],
        Backend::MySql => &[
            "CREATE TABLE sync_overlap (n BIGINT NOT NULL)",
            // Connections of this database (other tests share the server) running a write
            // or a locking read now: this one, and any other write's statement that runs or
            // waits for a lock at the same moment. (Not innodb_trx: MariaDB serves it from a
            // cache refreshed at most every 0.1 s, which missed every overlap. sqlx's
            // statements are prepared: 'Execute'.)
            "CREATE PROCEDURE record_overlap() BEGIN DO SLEEP(0.02); \
             INSERT INTO sync_overlap SELECT count(*) FROM information_schema.processlist \
             WHERE DB = DATABASE() AND COMMAND IN ('Query', 'Execute') AND (INFO LIKE 'INSERT%' \
             OR INFO LIKE 'UPDATE%' OR INFO LIKE '%FOR UPDATE%'); END",
            "CREATE TRIGGER overlap_subscriptions_i BEFORE INSERT ON stripe_subscriptions \
             FOR EACH ROW CALL record_overlap()",
            "CREATE TRIGGER overlap_subscriptions_u BEFORE UPDATE ON stripe_subscriptions \
             FOR EACH ROW CALL record_overlap()",
            "CREATE TRIGGER overlap_customers BEFORE UPDATE ON stripe_customers \
             FOR EACH ROW CALL record_overlap()",
        ],
        Backend::Sqlite => &[],
    };
    for sql in statements {
        app.db.exec(sql).await;
    }
}

/// The most write transactions [`log_overlapping_writes`] saw open at once.
async fn most_overlapping_writes(app: &TestApp) -> u64 {
    let most = app
        .db
        .texts("SELECT coalesce(max(n), 0) FROM sync_overlap")
        .await;
    most.join("").parse().expect("a count")
}

/// How long the writes a `meet` hook names wait for each other before the run fails: far
/// longer than a loaded machine takes to start them (reading a few pages from the in-process
/// Stripe), short enough that a run which no longer writes concurrently fails soon.
const MEET_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// One user with five customers (linked by Checkout Sessions) and twenty subscriptions in
/// every status, another linked by metadata with three, and one with two customers and no
/// subscription: the database a run with eight writes in flight leaves is the one a run with
/// one at a time leaves, and so are its counts; so is a run on a pool of one connection.
/// What makes it able to fail: the writes of eight subscriptions (three pages or more, at three
/// a page) were in flight together for certain (a debug-build hook, `meet`, holds each write of
/// the eight named until all have started, and fails the run after [`MEET_WITHIN`] otherwise), and the first of the two links to one user
/// starts 400 ms late (another hook), so a second link that did not wait for it would end
/// first and leave the wrong customer last. That the other runs wrote one at a time is
/// counted by a trigger: load can only make writes overlap less.
async fn concurrent_writes_end_as_one_at_a_time(backend: Backend) {
    let statuses = [
        "active",
        "past_due",
        "canceled",
        "trialing",
        "unpaid",
        "incomplete",
    ];
    let mut ends = Vec::new();
    for (writers, pool) in [("8", "10"), ("1", "10"), ("8", "1")] {
        let app = spawn_app(backend).await;
        let stripe = FakeStripe::start(KEY, 3).await;
        let now = Utc::now().timestamp();
        app.user("many@example.com").await;
        app.user("meta@example.com").await;
        app.user("order@example.com").await;
        let many = app.user_id("many@example.com").await.to_string();
        let meta = app.user_id("meta@example.com").await.to_string();
        let order = app.user_id("order@example.com").await.to_string();
        // Listed first, linked first: a, then b. With no subscription, the last linked is
        // the user's customer.
        for c in ["a", "b"] {
            let cus = format!("cus_order_{c}");
            stripe.add_customer(customer(&cus, None, None));
            stripe.add_checkout_session(checkout_session(
                &format!("cs_order_{c}"),
                &order,
                &cus,
                &format!("sub_order_{c}"),
            ));
        }
        let mut n = 0;
        for c in 0..5 {
            let cus = format!("cus_many{c}");
            stripe.add_customer(customer(&cus, Some("many@example.com"), None));
            stripe.add_checkout_session(checkout_session(
                &format!("cs_many{c}"),
                &many,
                &cus,
                &format!("sub_many{c}_0"),
            ));
            for s in 0..4 {
                let status = statuses[n % statuses.len()];
                let end = now + (n as i64 + 1) * 86_400;
                stripe.put_subscription(subscription(
                    &format!("sub_many{c}_{s}"),
                    &cus,
                    status,
                    end,
                ));
                n += 1;
            }
        }
        stripe.add_customer(customer("cus_meta", Some("meta@example.com"), Some(&meta)));
        for s in 0..3 {
            let status = statuses[(s + 1) % statuses.len()];
            let end = now + (s as i64 + 3) * 86_400;
            stripe.put_subscription(subscription(
                &format!("sub_meta{s}"),
                "cus_meta",
                status,
                end,
            ));
        }
        // SQLite's pool has one connection whatever is asked: one at a time there.
        let together = (writers, pool) == ("8", "10") && backend != Backend::Sqlite;
        let hooks = if together {
            // Two customers' subscriptions, of one user: all eight wait for each other, then
            // lock the same rows at once.
            let eight: Vec<String> = (0..2)
                .flat_map(|c| (0..4).map(move |s| format!("sub_many{c}_{s}")))
                .collect();
            format!(
                "delay:cus_order_a:400,meet:{}:{}",
                eight.join("+"),
                MEET_WITHIN.as_millis()
            )
        } else {
            log_overlapping_writes(&app, backend).await;
            "delay:cus_order_a:400".to_owned()
        };
        let vars = [
            ("STRIPE_SYNC_WRITERS", writers),
            ("DB_MAX_CONNECTIONS", pool),
            ("STRIPE_SYNC_WRITE_HOOKS", hooks.as_str()),
            ("LOG_FORMAT", "json"),
        ];
        let run = stripe_sync_env(&app, &stripe, Some(KEY), &[], &vars).await;
        assert!(run.success, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(run.count("checkout"), 7, "{}", run.stdout);
        assert_eq!(run.count("metadata.user_id"), 1, "{}", run.stdout);
        assert_eq!(run.count("updated"), 23, "{}", run.stdout);
        assert_eq!(
            app.billing_row("order@example.com").await,
            "cus_order_b|-|none|-",
            "{writers} writers, pool {pool}: Stripe's order, whatever ended first"
        );
        // A write's logs carry the run's span, though it runs in a task of its own.
        let second_links: Vec<serde_json::Value> = run
            .stderr
            .lines()
            .filter(|l| l.contains("user linked to a second Stripe customer"))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(second_links.len(), 5, "{}", run.stderr);
        for line in &second_links {
            let spans = line["spans"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            assert!(
                spans.iter().any(|span| span["name"] == "sync"),
                "not in the run's span: {line}"
            );
        }
        let summary = run
            .stdout
            .lines()
            .find(|l| l.starts_with("stripe-sync: "))
            .map(str::to_owned);
        let rows = [
            app.billing_row("many@example.com").await,
            app.billing_row("meta@example.com").await,
            app.db
                .texts(
                    "SELECT concat_ws('|', subscription_id, customer_id, status, created, \
                     lifecycle_rank, CASE WHEN past_due_since IS NULL THEN '-' ELSE 'set' END) \
                     FROM stripe_subscriptions ORDER BY subscription_id",
                )
                .await
                .join(","),
            app.db
                .texts(
                    "SELECT concat_ws('|', customer_id, coalesce(user_id, 0)) \
                     FROM stripe_customers ORDER BY customer_id",
                )
                .await
                .join(","),
        ];
        // A repeat changes nothing, whatever the writers.
        let again = stripe_sync_env(&app, &stripe, Some(KEY), &[], &vars).await;
        assert!(again.success, "{}\n{}", again.stdout, again.stderr);
        assert_eq!(again.count("updated"), 0, "{}", again.stdout);
        assert_eq!(again.count("unchanged"), 23, "{}", again.stdout);
        // With `meet`, both runs above succeeding is the proof of overlap: a meeting that
        // timed out would have panicked a write and failed the run.
        if !together && backend != Backend::Sqlite {
            let most = most_overlapping_writes(&app).await;
            assert_eq!(most, 1, "{writers} writers, pool {pool}: writes overlapped");
        }
        ends.push((summary, rows, app.billing_row("many@example.com").await));
    }
    // `created` is the run's own clock: equal within a run, not across two. Compared without it.
    let strip = |rows: &[String; 4]| {
        let mut rows = rows.clone();
        rows[2] = rows[2]
            .split(',')
            .map(|r| {
                let f: Vec<&str> = r.split('|').collect();
                format!("{}|{}|{}|{}", f[0], f[1], f[2], f[4..].join("|"))
            })
            .collect::<Vec<_>>()
            .join(",");
        rows
    };
    for end in &ends[1..] {
        assert_eq!(ends[0].0, end.0, "the same counts");
        assert_eq!(strip(&ends[0].1), strip(&end.1));
        assert_eq!(ends[0].2, end.2);
    }
}

/// Writes that fail, in flight with others, fail alone: a subscription the database refuses
/// (a trigger on the user's row, after its snapshot was written in the same transaction), and
/// a subscription and a link whose tasks panic (debug-build hooks). Each is counted and named
/// by its customer, its transaction is rolled back whole, and every other write is kept. The
/// panicked link releases only its own user's guard: a link to another user that waits for a
/// slow first one still waits (Stripe's order decides that user's last customer).
async fn a_write_that_fails_loses_no_other(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 4).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    let refuse: &[&str] = match backend {
        Backend::Postgres => &[
            "CREATE FUNCTION refuse_sub() RETURNS trigger AS $$ BEGIN \
             RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse BEFORE UPDATE ON users FOR EACH ROW \
             WHEN (NEW.subscription_id = 'sub_refused') EXECUTE FUNCTION refuse_sub()",
        ],
        Backend::MySql => &["CREATE TRIGGER refuse BEFORE UPDATE ON users \
             FOR EACH ROW BEGIN IF NEW.subscription_id = 'sub_refused' THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'; END IF; END"],
        Backend::Sqlite => &["CREATE TRIGGER refuse BEFORE UPDATE ON users \
             WHEN NEW.subscription_id = 'sub_refused' \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"],
    };
    for sql in refuse {
        app.db.exec(sql).await;
    }
    // For its 20 ms per write, which keeps the other writes in flight while one fails; the
    // count it records is not asserted (see the end of this test).
    log_overlapping_writes(&app, backend).await;
    // Listed first: a slow link to `two`, a link that panics, then `two`'s second customer.
    app.user("two@example.com").await;
    app.user("boom@example.com").await;
    let two = app.user_id("two@example.com").await.to_string();
    let boom = app.user_id("boom@example.com").await.to_string();
    stripe.add_customer(customer("cus_two_a", None, Some(&two)));
    stripe.add_customer(customer("cus_boom", None, Some(&boom)));
    stripe.add_customer(customer("cus_two_b", None, Some(&two)));
    let mut emails = Vec::new();
    for i in 0..12 {
        let email = format!("payer{i}@example.com");
        app.user(&email).await;
        let uid = app.user_id(&email).await.to_string();
        let cus = format!("cus_payer{i}");
        stripe.add_customer(customer(&cus, Some(&email), Some(&uid)));
        let sub = match i {
            5 => "sub_refused".to_owned(),
            8 => "sub_panics".to_owned(),
            _ => format!("sub_payer{i}"),
        };
        stripe.put_subscription(subscription(&sub, &cus, "active", period_end));
        emails.push((email, cus, sub));
    }
    let vars = [
        ("STRIPE_SYNC_WRITERS", "8"),
        (
            "STRIPE_SYNC_WRITE_HOOKS",
            "delay:cus_two_a:600,panic:cus_boom,panic:sub_panics",
        ),
    ];
    let run = stripe_sync_env(&app, &stripe, Some(KEY), &[], &vars).await;
    assert!(!run.success, "{}", run.stdout);
    assert_eq!(run.count("failed"), 3, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.count("updated"), 10, "{}", run.stdout);
    assert_eq!(run.count("metadata.user_id"), 14, "{}", run.stdout);
    for named in [
        "customer cus_payer5: subscription sub_refused",
        "customer cus_payer8: subscription sub_panics: its task panicked",
        &format!("customer cus_boom: linking to user {boom}: its task panicked"),
    ] {
        assert!(
            run.stderr.contains(named),
            "{named:?} not in {}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("customer ?"), "{}", run.stderr);
    for (email, cus, sub) in &emails {
        let row = app.billing_row(email).await;
        if sub == "sub_refused" || sub == "sub_panics" {
            // Linked (a write of its own), but its subscription was not written.
            assert_eq!(row, format!("{cus}|-|none|-"), "{email}");
        } else {
            assert_eq!(row, format!("{cus}|{sub}|active|set"), "{email}");
        }
    }
    assert_eq!(app.billing_row("boom@example.com").await, "-|-|none|-");
    assert_eq!(
        app.billing_row("two@example.com").await,
        "cus_two_b|-|none|-",
        "the second link to `two` ran before the first ended"
    );
    // Rolled back whole: the snapshot written before the user's row was refused is gone.
    let stored = app
        .db
        .texts(
            "SELECT count(*) FROM stripe_subscriptions \
             WHERE subscription_id IN ('sub_refused', 'sub_panics')",
        )
        .await;
    assert_eq!(stored.join(""), "0");
    // Whether these writes overlapped in time is not asserted here: under CI's load (six test
    // threads on two cores) they once ran one at a time on MariaDB ("never overlapped: 1").
    // `concurrent_writes_end_as_one_at_a_time` asserts the overlap; this test is about what
    // a failed or panicked write leaves behind.
}

/// Two subscriptions of one customer in flight together, each on a page of its own (pages of
/// one: a page is one write): the first holds the customer's row (a trigger sleeps in its
/// insert) past DB_LOCK_TIMEOUT_MS, so the second's lock wait gives up (PostgreSQL 55P03,
/// MariaDB 1205), and is started again until the first has ended. One try only would count it
/// failed and leave it to the next run.
async fn a_lock_timeout_between_its_own_writes_is_retried(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 1).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    // MariaDB counts lock waits in whole seconds (1 at least): held longer there.
    let hold: &[&str] = match backend {
        Backend::Postgres => &[
            "CREATE FUNCTION hold_sub() RETURNS trigger AS $$ BEGIN \
             PERFORM pg_sleep(1.5); RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER hold BEFORE INSERT ON stripe_subscriptions FOR EACH ROW \
             WHEN (NEW.subscription_id = 'sub_hold') EXECUTE FUNCTION hold_sub()",
        ],
        _ => &["CREATE TRIGGER hold BEFORE INSERT ON stripe_subscriptions \
             FOR EACH ROW BEGIN IF NEW.subscription_id = 'sub_hold' THEN \
             DO SLEEP(2.5); END IF; END"],
    };
    for sql in hold {
        app.db.exec(sql).await;
    }
    app.user("held@example.com").await;
    let uid = app.user_id("held@example.com").await.to_string();
    stripe.add_customer(customer("cus_held", None, Some(&uid)));
    for sub in ["sub_hold", "sub_wait"] {
        stripe.put_subscription(subscription(sub, "cus_held", "active", period_end));
    }
    let vars = [
        ("STRIPE_SYNC_WRITERS", "8"),
        ("DB_LOCK_TIMEOUT_MS", "300"),
        // sub_hold's write takes the customer's row first.
        ("STRIPE_SYNC_WRITE_HOOKS", "delay:sub_wait:500"),
    ];
    let run = stripe_sync_env(&app, &stripe, Some(KEY), &[], &vars).await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.count("updated"), 2, "{}", run.stdout);
    assert_eq!(run.count("failed"), 0, "{}", run.stdout);
    // It did wait too long once at least: the retry is what saved it.
    assert!(
        run.stderr
            .contains("stripe-sync write waited too long for a lock; retrying"),
        "{}",
        run.stderr
    );
    let stored = app
        .db
        .texts("SELECT count(*) FROM stripe_subscriptions WHERE customer_id = 'cus_held'")
        .await;
    assert_eq!(stored.join(""), "2");
}

/// A run that stops on an error (here Stripe refuses the key half-way, when the third
/// subscription of the first page has its invoices read) keeps the writes already made, and
/// its last counts on stderr include them: not the counts of the last progress line before
/// them.
async fn a_run_stopped_by_an_error_shows_the_writes_it_made(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 3).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    for (i, status) in ["active", "active", "past_due", "active"]
        .iter()
        .enumerate()
    {
        let email = format!("p{i}@example.com");
        app.user(&email).await;
        let uid = app.user_id(&email).await.to_string();
        let cus = format!("cus_p{i}");
        stripe.add_customer(customer(&cus, None, Some(&uid)));
        stripe.put_subscription(subscription(&format!("sub_p{i}"), &cus, status, period_end));
    }
    stripe.fail_next(Fault::new("/v1/invoices", 401));
    let run = stripe_sync(&app, &stripe, Some(KEY), &[]).await;
    assert!(!run.success, "{}", run.stdout);
    assert!(run.stderr.contains("error: "), "{}", run.stderr);
    let stored = app
        .db
        .texts("SELECT subscription_id FROM stripe_subscriptions ORDER BY subscription_id")
        .await;
    assert_eq!(stored.join(","), "sub_p0,sub_p1");
    let last = run.last_progress();
    assert_eq!(count_in(last, "updated"), 2, "{}", run.stderr);
    assert_eq!(count_in(last, "metadata.user_id"), 4, "{}", run.stderr);
}

/// `billing stripe-sync 2>&1 | head -1`: the reader of stderr has gone, and the run still
/// ends its work and exits 0, where `eprintln!` panicked (exit 101) at its first line.
async fn a_closed_stderr_gets_no_panic(backend: Backend) {
    let app = spawn_app(backend).await;
    let stripe = FakeStripe::start(KEY, 10).await;
    let period_end = Utc::now().timestamp() + 20 * 86_400;
    app.user("ann@example.com").await;
    let uid = app.user_id("ann@example.com").await.to_string();
    stripe.add_customer(customer("cus_ann", None, Some(&uid)));
    // A customer left alone: a note on stderr besides the progress lines.
    stripe.add_customer(customer("cus_nobody", None, Some("not-a-user-id")));
    stripe.put_subscription(subscription("sub_ann", "cus_ann", "active", period_end));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_billing"))
        .arg("stripe-sync")
        .env("DATABASE_URL", &app.db.url)
        .env("STRIPE_API_BASE", &stripe.base)
        .env("STRIPE_API_KEY", KEY)
        .env("RUST_LOG", "info")
        .env_remove("STRIPE_MAX_REQUESTS_PER_SEC")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run billing stripe-sync");
    drop(child.stderr.take());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait for billing stripe-sync");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_ne!(output.status.code(), Some(101), "panicked: {stdout}");
    assert!(output.status.success(), "{:?}: {stdout}", output.status);
    assert!(stdout.contains("1 updated"), "{stdout}");
    assert_eq!(
        app.billing_row("ann@example.com").await,
        "cus_ann|sub_ann|active|set"
    );
}
