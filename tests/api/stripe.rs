use chrono::Utc;
use serde_json::Value;

use crate::helpers::{OLD_SECRET, SECRET, TestApp, checkout, event, spawn_app, subscription};
use crate::support::{self, Backend};

crate::on_every_backend!(
    every_signature_case,
    every_event_type_in_both_payload_shapes,
    a_repeated_delivery_changes_nothing,
    every_order_of_a_realistic_sequence_ends_in_the_same_state,
    same_second_events_resolve_the_same_way_in_either_order,
    concurrent_deliveries_end_as_sequential_ones,
    unknown_customers_and_types_are_acknowledged,
);

async fn events_stored(app: &TestApp) -> String {
    app.db
        .texts("SELECT count(*) FROM stripe_events")
        .await
        .join("")
}

async fn every_signature_case(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = Utc::now().timestamp();
    let ok_event =
        |n: u32| event(&format!("evt_sig_{n}"), "invoice.paid", now, Value::Null).to_string();
    let sign = |body: &str, secret: &str, at: i64| {
        api::stripe::signature::sign(body.as_bytes(), secret, at)
    };

    // Valid: the current and the rotated-out secret, several v1 entries. Agreement with
    // Stripe's own library is checked by `api/tests/signature_vectors.rs`, without Python.
    let body = ok_event(1);
    assert_eq!(
        app.deliver(&body, Some(&sign(&body, SECRET, now))).await.0,
        200
    );
    let body = ok_event(2);
    assert_eq!(
        app.deliver(&body, Some(&sign(&body, SECRET, now))).await.0,
        200
    );
    let body = ok_event(3);
    assert_eq!(
        app.deliver(&body, Some(&sign(&body, OLD_SECRET, now)))
            .await
            .0,
        200
    );
    let body = ok_event(4);
    let good = sign(&body, SECRET, now);
    let v1 = good.split_once(",v1=").map(|(_, s)| s).unwrap();
    let several = format!("t={now},v1={},v1={v1},v0=deadbeef", "ab".repeat(32));
    assert_eq!(app.deliver(&body, Some(&several)).await.0, 200);
    assert_eq!(events_stored(&app).await, "4");

    // Refused, and nothing written.
    let body = ok_event(5);
    let cases: Vec<(&str, Option<String>, String)> = vec![
        (
            "wrong secret",
            Some(sign(&body, "whsec_wrong", now)),
            body.clone(),
        ),
        ("stale", Some(sign(&body, SECRET, now - 301)), body.clone()),
        (
            "from the future",
            Some(sign(&body, SECRET, now + 360)),
            body.clone(),
        ),
        (
            "tampered body",
            Some(sign(&body, SECRET, now)),
            body.replace("evt_sig_5", "evt_sig_6"),
        ),
        ("missing header", None, body.clone()),
        (
            "malformed header",
            Some("v1=zz,t=nope".to_owned()),
            body.clone(),
        ),
        ("no v1", Some(format!("t={now}")), body.clone()),
        (
            "stripe lib, wrong secret",
            Some(sign(&body, "whsec_other", now)),
            body.clone(),
        ),
    ];
    for (name, header, body) in cases {
        let (status, response) = app.deliver(&body, header.as_deref()).await;
        assert_eq!(status, 400, "{name}: {response}");
        assert_eq!(response["error"]["code"], "invalid_signature", "{name}");
    }
    assert_eq!(events_stored(&app).await, "4");

    // Signed but not a Stripe event: 400, nothing written.
    let garbage = "{not json";
    assert_eq!(
        app.deliver(garbage, Some(&sign(garbage, SECRET, now)))
            .await
            .0,
        400
    );
    assert_eq!(events_stored(&app).await, "4");
}

async fn every_event_type_in_both_payload_shapes(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = Utc::now().timestamp();
    let end = now + 30 * 86_400;
    for (basil, email) in [(true, "basil@example.com"), (false, "legacy@example.com")] {
        app.user(email).await;
        let uid = app.user_id(email).await;
        let tag = if basil { "b" } else { "l" };
        let customer = format!("cus_{tag}");
        let sub = format!("sub_{tag}");
        let deliver = |e: Value| {
            let app = &app;
            async move {
                let (status, body) = app.deliver_event(&e).await;
                assert_eq!(status, 200, "{body}");
                body["outcome"].as_str().unwrap_or("").to_owned()
            }
        };
        assert_eq!(
            deliver(checkout(&format!("evt_{tag}1"), now, uid, &customer, &sub)).await,
            "applied"
        );
        assert_eq!(
            app.billing_row(email).await,
            format!("{customer}|{sub}|none|-")
        );
        deliver(subscription(
            &format!("evt_{tag}2"),
            "created",
            now + 1,
            (&customer, &sub),
            "trialing",
            end,
            basil,
        ))
        .await;
        assert_eq!(
            app.billing_row(email).await,
            format!("{customer}|{sub}|trialing|set")
        );
        let period = app
            .db
            .texts(&format!(
                "SELECT tier FROM user_tiers WHERE user_id = {uid}"
            ))
            .await;
        assert_eq!(period, vec!["pro"]);
        for (n, stripe_status, ours) in [
            (3, "active", "active"),
            (4, "past_due", "past_due"),
            (5, "incomplete", "none"),
            (6, "paused", "unpaid"),
            (7, "some_future_status", "none"),
            (8, "incomplete_expired", "canceled"),
            (9, "unpaid", "unpaid"),
        ] {
            deliver(subscription(
                &format!("evt_{tag}{n}"),
                "updated",
                now + n,
                (&customer, &sub),
                stripe_status,
                end,
                basil,
            ))
            .await;
            assert_eq!(
                app.billing_row(email).await,
                format!("{customer}|{sub}|{ours}|set"),
                "{stripe_status}"
            );
        }
        deliver(subscription(
            &format!("evt_{tag}20"),
            "deleted",
            now + 20,
            (&customer, &sub),
            "canceled",
            end,
            basil,
        ))
        .await;
        assert_eq!(
            app.billing_row(email).await,
            format!("{customer}|{sub}|canceled|set")
        );
        deliver(event(
            &format!("evt_{tag}21"),
            "customer.deleted",
            now + 21,
            serde_json::json!({"id": customer, "object": "customer"}),
        ))
        .await;
        assert_eq!(app.billing_row(email).await, "-|-|canceled|-");
    }
    // The latest item's period end is the one kept (basil shape), the top-level one otherwise.
    let ends = app
        .db
        .texts("SELECT concat_ws('|', id, current_period_end) FROM stripe_events WHERE id IN ('evt_b2', 'evt_l2') ORDER BY id")
        .await;
    assert_eq!(ends.len(), 2);
    assert_eq!(
        ends[0].split('|').nth(1),
        ends[1].split('|').nth(1),
        "{ends:?}"
    );
}

async fn a_repeated_delivery_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.user("ann@example.com").await;
    let uid = app.user_id("ann@example.com").await;
    let now = Utc::now().timestamp();
    app.deliver_event(&checkout("evt_1", now, uid, "cus_1", "sub_1"))
        .await;
    let created = subscription(
        "evt_2",
        "created",
        now + 1,
        ("cus_1", "sub_1"),
        "active",
        now + 86_400,
        true,
    );
    assert_eq!(app.deliver_event(&created).await.1["outcome"], "applied");
    let later = subscription(
        "evt_3",
        "updated",
        now + 2,
        ("cus_1", "sub_1"),
        "past_due",
        now + 86_400,
        true,
    );
    app.deliver_event(&later).await;
    let before = app.billing_row("ann@example.com").await;
    // Stripe retries evt_2 (older): it is recognised and changes nothing.
    let (status, body) = app.deliver_event(&created).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")));
    assert_eq!(app.billing_row("ann@example.com").await, before);
    assert_eq!(before, "cus_1|sub_1|past_due|set");
}

fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for (i, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, *first);
            out.push(tail);
        }
    }
    out
}

/// checkout → created → updated → updated → deleted, delivered in each of the 120 orders
/// (one user and customer per order) ends in the state of the in-order delivery.
async fn every_order_of_a_realistic_sequence_ends_in_the_same_state(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = Utc::now().timestamp();
    let (t1, t2) = (now + 14 * 86_400, now + 44 * 86_400);
    for (n, order) in permutations(&[0, 1, 2, 3, 4]).into_iter().enumerate() {
        let email = format!("p{n}@example.com");
        app.user(&email).await;
        let uid = app.user_id(&email).await;
        let (cus, sub) = (format!("cus_p{n}"), format!("sub_p{n}"));
        let sequence = [
            checkout(&format!("evt_p{n}_0"), now, uid, &cus, &sub),
            subscription(
                &format!("evt_p{n}_1"),
                "created",
                now + 1,
                (&cus, &sub),
                "trialing",
                t1,
                true,
            ),
            subscription(
                &format!("evt_p{n}_2"),
                "updated",
                now + 2,
                (&cus, &sub),
                "active",
                t2,
                true,
            ),
            subscription(
                &format!("evt_p{n}_3"),
                "updated",
                now + 3,
                (&cus, &sub),
                "past_due",
                t2,
                false,
            ),
            subscription(
                &format!("evt_p{n}_4"),
                "deleted",
                now + 4,
                (&cus, &sub),
                "canceled",
                t2,
                true,
            ),
        ];
        for i in &order {
            let (status, body) = app.deliver_event(&sequence[*i]).await;
            assert_eq!(status, 200, "order {order:?}: {body}");
        }
        assert_eq!(
            app.billing_row(&email).await,
            format!("{cus}|{sub}|canceled|set"),
            "order {order:?}"
        );
    }
}

async fn same_second_events_resolve_the_same_way_in_either_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = Utc::now().timestamp();
    for (n, flip) in [(0, false), (1, true)] {
        let email = format!("tie{n}@example.com");
        app.user(&email).await;
        let uid = app.user_id(&email).await;
        let (cus, sub) = (format!("cus_t{n}"), format!("sub_t{n}"));
        app.deliver_event(&checkout(&format!("evt_t{n}_0"), now, uid, &cus, &sub))
            .await;
        let mut pair = vec![
            subscription(
                &format!("evt_t{n}_a"),
                "updated",
                now + 5,
                (&cus, &sub),
                "active",
                now + 86_400,
                true,
            ),
            subscription(
                &format!("evt_t{n}_b"),
                "updated",
                now + 5,
                (&cus, &sub),
                "past_due",
                now + 86_400,
                true,
            ),
        ];
        if flip {
            pair.reverse();
        }
        for e in &pair {
            app.deliver_event(e).await;
        }
        // The later lifecycle stage wins a tie.
        assert_eq!(
            app.billing_row(&email).await,
            format!("{cus}|{sub}|past_due|set")
        );
    }
}

async fn concurrent_deliveries_end_as_sequential_ones(backend: Backend) {
    let app = spawn_app(backend).await;
    app.user("ann@example.com").await;
    let uid = app.user_id("ann@example.com").await;
    let now = Utc::now().timestamp();
    let end = now + 86_400;
    let mut events = vec![checkout("evt_c0", now, uid, "cus_c", "sub_c")];
    for (n, status) in ["trialing", "active", "past_due", "canceled"]
        .iter()
        .enumerate()
    {
        let kind = if n == 3 { "deleted" } else { "updated" };
        events.push(subscription(
            &format!("evt_c{}", n + 1),
            kind,
            now + 1 + n as i64,
            ("cus_c", "sub_c"),
            status,
            end,
            true,
        ));
    }
    // Every event three times, all at once: duplicates and conflicts together.
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        for e in &events {
            let body = e.to_string();
            let header = api::stripe::signature::sign(body.as_bytes(), SECRET, now);
            let request = app
                .client
                .post(format!("{}/webhooks/stripe", app.address))
                .header("stripe-signature", header)
                .header("content-type", "application/json")
                .body(body);
            deliveries.push(tokio::spawn(async move {
                let response = request.send().await.expect("deliver");
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, body["outcome"].as_str().unwrap_or("").to_owned())
            }));
        }
    }
    let mut duplicates = 0;
    for d in deliveries {
        let (status, outcome) = d.await.unwrap();
        assert_eq!(status, 200, "{outcome}");
        duplicates += usize::from(outcome == "duplicate");
    }
    assert_eq!(duplicates, 10);
    assert_eq!(
        app.db.texts("SELECT count(*) FROM stripe_events").await,
        vec!["5"]
    );
    assert_eq!(
        app.billing_row("ann@example.com").await,
        "cus_c|sub_c|canceled|set"
    );
}

async fn unknown_customers_and_types_are_acknowledged(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = Utc::now().timestamp();
    let early = subscription(
        "evt_u1",
        "created",
        now + 1,
        ("cus_u", "sub_u"),
        "active",
        now + 86_400,
        true,
    );
    let (status, body) = app.deliver_event(&early).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("unknown_customer"))
    );
    let (status, body) = app
        .deliver_event(&event("evt_u2", "invoice.created", now, Value::Null))
        .await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("ignored")));
    let (status, body) = app
        .deliver_event(&checkout("evt_u3", now, 999_999, "cus_nobody", "sub_x"))
        .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("unknown_user"))
    );
    // The early event was kept: linking the customer applies it.
    app.user("late@example.com").await;
    let uid = app.user_id("late@example.com").await;
    app.deliver_event(&checkout("evt_u4", now, uid, "cus_u", "sub_u"))
        .await;
    assert_eq!(
        app.billing_row("late@example.com").await,
        "cus_u|sub_u|active|set"
    );
}

/// The database going away answers 5xx, so Stripe retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unavailable_answers_5xx_postgres() {
    let app = spawn_app(Backend::Postgres).await;
    let admin = support::connect(&format!(
        "{}/postgres",
        support::server_url(Backend::Postgres)
    ))
    .await;
    sea_orm::ConnectionTrait::execute_unprepared(
        &admin,
        &format!("DROP DATABASE {} WITH (FORCE)", app.db.name),
    )
    .await
    .expect("drop database");
    let now = Utc::now().timestamp();
    let (status, body) = app
        .deliver_event(&event("evt_down", "invoice.paid", now, Value::Null))
        .await;
    assert!(status >= 500, "{status} {body}");
    assert!(body["error"]["code"].is_string());
}
