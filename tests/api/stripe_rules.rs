//! Issue 18's tier rules as Stripe drives them, through signed webhook deliveries and
//! `/v1/billing`: grace counted from the failed payment, no renewal grace for a subscription
//! Stripe said will end, fail closed on a period end that is missing, one Stripe mode per
//! deployment, every event acknowledged, a lost race answered `stale`, and `incomplete` and
//! `paused` shown as themselves.
//!
//! Stripe's order of things, which the events below follow: at a renewal Stripe creates the
//! invoice and moves `current_period_end` to the end of the new period first, then tries the
//! charge; when it fails the subscription becomes `past_due` (`customer.subscription.updated`,
//! created then), and stays so while the retries fail.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, checkout, event, spawn_app, subscription};
use crate::support::{self, Backend};

crate::on_every_backend!(
    past_due_keeps_pro_for_the_grace_from_the_failed_payment,
    the_first_past_due_event_dates_the_failure_in_any_order,
    a_subscription_stripe_said_will_end_gets_no_renewal_grace,
    an_active_subscription_without_a_period_end_is_not_applied,
    events_of_the_other_mode_are_ignored,
    thin_and_unknown_events_are_acknowledged,
    a_delivery_that_loses_to_newer_state_answers_stale,
    billing_shows_incomplete_and_paused_as_themselves,
);

const DAY: i64 = 86_400;

/// A user linked to `customer` by checkout; returns their token.
async fn linked_user(app: &TestApp, email: &str, customer: &str, created: i64) -> String {
    let token = app.user(email).await;
    let uid = app.user_id(email).await;
    let linked = checkout(
        &format!("evt_co_{customer}"),
        created,
        uid,
        customer,
        "sub_x",
    );
    assert_eq!(deliver(app, &linked).await, "applied");
    token
}

/// Delivers a signed event; the outcome, once it answered 200.
async fn deliver(app: &TestApp, event: &Value) -> String {
    let (status, body) = app.deliver_event(event).await;
    assert_eq!(status, 200, "{body}");
    body["outcome"].as_str().unwrap_or("").to_owned()
}

/// `(tier, subscription_status)` from `/v1/billing`.
async fn billing(app: &TestApp, token: &str) -> (String, String) {
    let (status, body) = app.json(Method::GET, "/v1/billing", token).await;
    assert_eq!(status, 200, "{body}");
    let field = |name: &str| body[name].as_str().unwrap_or("").to_owned();
    (field("tier"), field("subscription_status"))
}

/// The view's tier, which the purge and any SQL reader use, for the user of `email`.
async fn view_tier(app: &TestApp, email: &str) -> String {
    let uid = app.user_id(email).await;
    app.db
        .texts(&format!(
            "SELECT tier FROM user_tiers WHERE user_id = {uid}"
        ))
        .await
        .join("")
}

/// A subscription object with `changes` merged in.
fn with(mut event: Value, changes: Value) -> Value {
    for (key, value) in changes.as_object().into_iter().flatten() {
        event["data"]["object"][key] = value.clone();
    }
    event
}

/// Issue 18, reproduction 1: a renewal that failed 20 days ago (monthly) or 300 days ago
/// (yearly) kept Pro until the unpaid period's end + 7 days. Now `past_due` keeps Pro for 7
/// days from the failure, whatever the period end.
async fn past_due_keeps_pro_for_the_grace_from_the_failed_payment(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now().timestamp();
    for (email, interval, failed_days_ago, expected) in [
        ("monthly@example.com", 30, 20, "free"),
        ("yearly@example.com", 365, 300, "free"),
        ("recent@example.com", 30, 2, "pro"),
        ("recent-yearly@example.com", 365, 6, "pro"),
    ] {
        let customer = format!("cus_{}", email.split('@').next().unwrap_or("x"));
        let sub = format!("sub_{customer}");
        let failed = now - failed_days_ago * DAY;
        let renewal_start = failed - 3_600;
        let token = linked_user(&app, email, &customer, renewal_start - interval * DAY).await;
        // Paid for a period, then invoiced (the period moves on before the charge), then the
        // charge failed.
        let next_end = renewal_start + interval * DAY;
        for (tag, kind, created, status, end) in [
            (
                "paid",
                "created",
                renewal_start - interval * DAY,
                "active",
                renewal_start,
            ),
            ("inv", "updated", renewal_start, "active", next_end),
            ("pd", "updated", failed, "past_due", next_end),
        ] {
            let id = format!("evt_{tag}_{customer}");
            let sent = subscription(&id, kind, created, (&customer, &sub), status, end, true);
            assert_eq!(deliver(&app, &sent).await, "applied", "{id}");
        }
        assert_eq!(
            billing(&app, &token).await,
            (expected.to_owned(), "past_due".to_owned()),
            "{email}"
        );
        assert_eq!(view_tier(&app, email).await, expected, "{email}");
    }
    // The open renewal invoice, when the event carries it expanded, dates the failure even
    // when the event itself comes later (a retry's update, say).
    let token = linked_user(&app, "invoice@example.com", "cus_inv", now - 40 * DAY).await;
    let late = with(
        subscription(
            "evt_pd_inv",
            "updated",
            now - DAY,
            ("cus_inv", "sub_inv"),
            "past_due",
            now + 21 * DAY,
            true,
        ),
        json!({"latest_invoice": {"id": "in_1", "object": "invoice", "status": "open",
            "created": now - 9 * DAY - 3_600,
            "status_transitions": {"finalized_at": now - 9 * DAY}}}),
    );
    assert_eq!(deliver(&app, &late).await, "applied");
    assert_eq!(billing(&app, &token).await.0, "free");
    assert_eq!(view_tier(&app, "invoice@example.com").await, "free");
}

/// The first event showing `past_due` dates the failure, whichever order the events come in:
/// a later retry's event delivered first, then the first one, still counts from the first.
/// Paying again ends the stretch; failing again starts a new one.
async fn the_first_past_due_event_dates_the_failure_in_any_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now().timestamp();
    let token = linked_user(&app, "ann@example.com", "cus_a", now - 60 * DAY).await;
    let end = now + 22 * DAY;
    let past_due = |id: &str, created: i64| {
        subscription(
            id,
            "updated",
            created,
            ("cus_a", "sub_a"),
            "past_due",
            end,
            true,
        )
    };
    // The retry's update (2 days ago) arrives first: Pro, the failure looks recent.
    assert_eq!(
        deliver(&app, &past_due("evt_2", now - 2 * DAY)).await,
        "applied"
    );
    assert_eq!(billing(&app, &token).await.0, "pro");
    // The first failure (8 days ago) arrives late: older than the stored snapshot, but it
    // dates the stretch, and the grace is over.
    assert_eq!(
        deliver(&app, &past_due("evt_1", now - 8 * DAY)).await,
        "applied"
    );
    assert_eq!(billing(&app, &token).await.0, "free");
    assert_eq!(view_tier(&app, "ann@example.com").await, "free");
    // Dunning set to leave it past due: Stripe invoices the next period, which fails too.
    // Still the same unpaid stretch: no new grace.
    let next_period = subscription(
        "evt_2b",
        "updated",
        now - DAY,
        ("cus_a", "sub_a"),
        "past_due",
        end + 30 * DAY,
        true,
    );
    assert_eq!(deliver(&app, &next_period).await, "applied");
    assert_eq!(billing(&app, &token).await.0, "free");
    assert_eq!(view_tier(&app, "ann@example.com").await, "free");
    // Paid: active again.
    let paid = subscription(
        "evt_3",
        "updated",
        now - DAY + 60,
        ("cus_a", "sub_a"),
        "active",
        end + 30 * DAY,
        true,
    );
    assert_eq!(deliver(&app, &paid).await, "applied");
    assert_eq!(billing(&app, &token).await, ("pro".into(), "active".into()));
    // A failure after the payment starts a new stretch, from its own event.
    let next = subscription(
        "evt_4",
        "updated",
        now - 60,
        ("cus_a", "sub_a"),
        "past_due",
        end + 60 * DAY,
        true,
    );
    assert_eq!(deliver(&app, &next).await, "applied");
    assert_eq!(
        billing(&app, &token).await,
        ("pro".into(), "past_due".into())
    );
}

/// `cancel_at_period_end` (or a trial ending with no payment method, set to pause) means no
/// renewal is coming: Pro ends at the period end, without the 3 days a renewing subscription
/// keeps while its renewal event is late.
async fn a_subscription_stripe_said_will_end_gets_no_renewal_grace(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now().timestamp();
    let ended = now - DAY;
    let cases = [
        ("renews@example.com", "active", json!({}), "pro"),
        (
            "cancels@example.com",
            "active",
            json!({"cancel_at_period_end": true}),
            "free",
        ),
        (
            "trial@example.com",
            "trialing",
            json!({"default_payment_method": null,
                "trial_settings": {"end_behavior": {"missing_payment_method": "pause"}}}),
            "free",
        ),
    ];
    for (n, (email, status, changes, expected)) in cases.into_iter().enumerate() {
        let customer = format!("cus_{n}");
        let token = linked_user(&app, email, &customer, now - 40 * DAY).await;
        let updated = with(
            subscription(
                &format!("evt_{n}"),
                "updated",
                now - 30 * DAY,
                (&customer, &format!("sub_{n}")),
                status,
                ended,
                true,
            ),
            changes,
        );
        assert_eq!(deliver(&app, &updated).await, "applied");
        assert_eq!(billing(&app, &token).await.0, expected, "{email}");
        assert_eq!(view_tier(&app, email).await, expected, "{email}");
    }
}

/// An `active` event with no period end anywhere (neither on the subscription nor on its
/// items) used to grant Pro with no end. It is acknowledged as `unusable` and changes nothing.
async fn an_active_subscription_without_a_period_end_is_not_applied(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now().timestamp();
    let token = linked_user(&app, "ann@example.com", "cus_a", now - 60).await;
    let endless = event(
        "evt_endless",
        "customer.subscription.created",
        now,
        json!({"id": "sub_a", "object": "subscription", "customer": "cus_a",
            "status": "active", "items": {"object": "list", "data": [{"id": "si_1"}]}}),
    );
    assert_eq!(deliver(&app, &endless).await, "unusable");
    assert_eq!(billing(&app, &token).await.0, "free");
    assert_eq!(
        app.db
            .texts("SELECT count(*) FROM stripe_subscriptions")
            .await,
        vec!["0"]
    );
}

/// The deployment serves test mode (the helpers' setting): a live-mode event, or one without
/// `livemode`, is acknowledged and ignored, and grants nothing.
async fn events_of_the_other_mode_are_ignored(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now().timestamp();
    let token = linked_user(&app, "ann@example.com", "cus_a", now - 60).await;
    let active = subscription(
        "evt_live",
        "created",
        now,
        ("cus_a", "sub_a"),
        "active",
        now + 30 * DAY,
        true,
    );
    let mut live = active.clone();
    live["livemode"] = true.into();
    let mut unsaid = active.clone();
    unsaid["id"] = "evt_unsaid".into();
    if let Some(envelope) = unsaid.as_object_mut() {
        envelope.remove("livemode");
    }
    for other in [live, unsaid] {
        assert_eq!(deliver(&app, &other).await, "ignored");
        assert_eq!(billing(&app, &token).await.0, "free");
    }
    let mut test_mode = active;
    test_mode["id"] = "evt_test".into();
    assert_eq!(deliver(&app, &test_mode).await, "applied");
    assert_eq!(billing(&app, &token).await.0, "pro");
}

/// Thin events (an event destination's: no `data.object`, RFC 3339 `created`) used to answer
/// 400, which Stripe retries for days; unknown types answer `ignored` as before.
async fn thin_and_unknown_events_are_acknowledged(backend: Backend) {
    let app = spawn_app(backend).await;
    let thin = json!({"id": "evt_thin", "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered", "livemode": false,
        "created": "2026-01-10T12:00:00.000Z", "context": null,
        "related_object": {"id": "mtr_1", "type": "billing.meter",
            "url": "/v1/billing/meters/mtr_1"}});
    let now = chrono::Utc::now().timestamp();
    let unknown = event(
        "evt_unknown",
        "invoice.payment_failed",
        now,
        json!({"id": "in_1"}),
    );
    for acknowledged in [thin, unknown] {
        assert_eq!(
            deliver(&app, &acknowledged).await,
            "ignored",
            "{acknowledged}"
        );
    }
}

/// A delivery older than the stored snapshot is recorded but changes nothing: it says
/// `stale`, so the loss shows (it said `applied`).
async fn a_delivery_that_loses_to_newer_state_answers_stale(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now().timestamp();
    let token = linked_user(&app, "ann@example.com", "cus_a", now - 60).await;
    let end = now + 30 * DAY;
    let newer = subscription(
        "evt_2",
        "deleted",
        now,
        ("cus_a", "sub_a"),
        "canceled",
        end,
        true,
    );
    let older = subscription(
        "evt_1",
        "created",
        now - 10,
        ("cus_a", "sub_a"),
        "active",
        end,
        true,
    );
    assert_eq!(deliver(&app, &newer).await, "applied");
    assert_eq!(deliver(&app, &older).await, "stale");
    assert_eq!(deliver(&app, &older).await, "duplicate");
    assert_eq!(
        billing(&app, &token).await,
        ("free".into(), "canceled".into())
    );
}

/// `incomplete` (a first payment is waiting: no second Checkout) and `paused` (a trial ended
/// without a payment method) are what a client acts on; `/v1/billing` shows them as
/// themselves, where it showed `none` and `unpaid`.
async fn billing_shows_incomplete_and_paused_as_themselves(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now().timestamp();
    for (n, status) in ["incomplete", "paused"].into_iter().enumerate() {
        let customer = format!("cus_{n}");
        let email = format!("{status}@example.com");
        let token = linked_user(&app, &email, &customer, now - 60).await;
        let created = subscription(
            &format!("evt_{n}"),
            "created",
            now,
            (&customer, &format!("sub_{n}")),
            status,
            now + 30 * DAY,
            true,
        );
        assert_eq!(deliver(&app, &created).await, "applied");
        assert_eq!(
            billing(&app, &token).await,
            ("free".to_owned(), status.to_owned())
        );
    }
}
