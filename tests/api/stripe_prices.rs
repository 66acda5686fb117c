//! What grants Pro: the `PRO_PRICE_IDS` allow-list (issue 18), through signed webhook
//! deliveries, `/v1/billing` and the `user_tiers` view, on every backend; and the start-up
//! refusal of a malformed entry.
//!
//! The events are Stripe-shaped subscription events whose items carry a `price` object (id,
//! `product` as an id or expanded), as Stripe sends them.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, checkout, event, spawn_app, spawn_app_with};
use crate::support::{self, Backend};

crate::on_every_backend!(
    only_a_listed_price_or_product_grants_pro,
    with_no_list_any_subscription_grants_pro,
    an_event_after_the_list_changed_rewrites_the_flag,
);

const DAY: i64 = 86_400;
/// The list the tests configure: one price, one product.
const LIST: &str = "price_1ProMonthly, prod_Team";

/// A subscription event whose items carry `prices` (`(price id, product)`, the product an
/// id string or an expanded object), basil-shaped (the period end on the items).
fn priced(
    id: &str,
    created: i64,
    (customer, sub): (&str, &str),
    status: &str,
    prices: &[(&str, Value)],
) -> Value {
    let end = created + 30 * DAY;
    let items: Vec<Value> = prices
        .iter()
        .enumerate()
        .map(|(n, (price, product))| {
            json!({"id": format!("si_{sub}_{n}"), "object": "subscription_item",
                "current_period_start": created, "current_period_end": end, "quantity": 1,
                "price": {"id": price, "object": "price", "active": true, "currency": "usd",
                    "product": product, "type": "recurring", "unit_amount": 500,
                    "recurring": {"interval": "month", "interval_count": 1}}})
        })
        .collect();
    event(
        id,
        "customer.subscription.updated",
        created,
        json!({"id": sub, "object": "subscription", "customer": customer, "status": status,
            "cancel_at_period_end": false, "cancel_at": null,
            "items": {"object": "list", "data": items, "has_more": false}}),
    )
}

/// Delivers a signed event; the outcome, once it answered 200.
async fn deliver(app: &TestApp, event: &Value) -> String {
    let (status, body) = app.deliver_event(event).await;
    assert_eq!(status, 200, "{body}");
    body["outcome"].as_str().unwrap_or("").to_owned()
}

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

/// `(tier, subscription_status)` from `/v1/billing`, and the view's tier.
async fn tiers(app: &TestApp, token: &str, email: &str) -> (String, String, String) {
    let (status, body) = app.json(Method::GET, "/v1/billing", token).await;
    assert_eq!(status, 200, "{body}");
    let field = |name: &str| body[name].as_str().unwrap_or("").to_owned();
    let uid = app.user_id(email).await;
    let view = app
        .db
        .texts(&format!(
            "SELECT tier FROM user_tiers WHERE user_id = {uid}"
        ))
        .await
        .join("");
    (field("tier"), field("subscription_status"), view)
}

/// `(name, status, items' (price, product), expected tier)`.
type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, Value)>,
    &'static str,
);

fn product(id: &str) -> Value {
    json!(id)
}

fn expanded(id: &str) -> Value {
    json!({"id": id, "object": "product", "active": true, "name": "A plan"})
}

/// With the list set: a listed price grants Pro, an unlisted one nothing (the tier of a user
/// with no subscription), a listed product as an id or expanded grants Pro, and one listed
/// item among several is enough. Every status that grants Pro follows the flag.
async fn only_a_listed_price_or_product_grants_pro(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.stripe.pro_prices = api::stripe::prices::ProPrices::parse(LIST).expect("list");
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    let cases: [Case; 7] = [
        (
            "listed",
            "active",
            vec![("price_1ProMonthly", product("prod_Pro"))],
            "pro",
        ),
        (
            "unlisted",
            "active",
            vec![("price_1Basic", product("prod_Basic"))],
            "free",
        ),
        (
            "unlisted-trial",
            "trialing",
            vec![("price_1Basic", product("prod_Basic"))],
            "free",
        ),
        (
            "product-id",
            "active",
            vec![("price_1TeamYearly", product("prod_Team"))],
            "pro",
        ),
        (
            "product-expanded",
            "active",
            vec![("price_1TeamEur", expanded("prod_Team"))],
            "pro",
        ),
        (
            "product-expanded-unlisted",
            "active",
            vec![("price_1Other", expanded("prod_Basic"))],
            "free",
        ),
        (
            "one-of-two",
            "active",
            vec![
                ("price_1Basic", product("prod_Basic")),
                ("price_1Seats", expanded("prod_Team")),
            ],
            "pro",
        ),
    ];
    for (name, status, prices, expected) in cases {
        let email = format!("{name}@example.com");
        let customer = format!("cus_{name}");
        let token = linked_user(&app, &email, &customer, now - DAY).await;
        let sent = priced(
            &format!("evt_{name}"),
            now - 3_600,
            (&customer, &format!("sub_{name}")),
            status,
            &prices,
        );
        assert_eq!(deliver(&app, &sent).await, "applied", "{name}");
        assert_eq!(
            tiers(&app, &token, &email).await,
            (expected.to_owned(), status.to_owned(), expected.to_owned()),
            "{name}"
        );
    }
    // past_due within its grace follows the flag too.
    for (name, price, expected) in [
        ("pd-listed", "price_1ProMonthly", "pro"),
        ("pd-unlisted", "price_1Basic", "free"),
    ] {
        let email = format!("{name}@example.com");
        let customer = format!("cus_{name}");
        let token = linked_user(&app, &email, &customer, now - DAY).await;
        let sent = priced(
            &format!("evt_{name}"),
            now - 3_600,
            (&customer, &format!("sub_{name}")),
            "past_due",
            &[(price, product("prod_Basic"))],
        );
        assert_eq!(deliver(&app, &sent).await, "applied", "{name}");
        assert_eq!(tiers(&app, &token, &email).await.0, expected, "{name}");
        assert_eq!(tiers(&app, &token, &email).await.2, expected, "{name}");
    }
    // An unlisted subscription beside a listed one of another customer: Pro, and the listed
    // one decides the columns.
    let token = linked_user(&app, "two@example.com", "cus_two_a", now - DAY).await;
    let uid = app.user_id("two@example.com").await;
    let second = checkout("evt_co_two_b", now - DAY, uid, "cus_two_b", "sub_x");
    assert_eq!(deliver(&app, &second).await, "applied");
    for (n, customer, price) in [
        (1, "cus_two_a", "price_1Basic"),
        (2, "cus_two_b", "price_1ProMonthly"),
    ] {
        let sent = priced(
            &format!("evt_two_{n}"),
            now - 3_600,
            (customer, &format!("sub_two_{n}")),
            if n == 1 { "active" } else { "trialing" },
            &[(price, product("prod_Basic"))],
        );
        assert_eq!(deliver(&app, &sent).await, "applied");
    }
    assert_eq!(
        tiers(&app, &token, "two@example.com").await,
        ("pro".to_owned(), "trialing".to_owned(), "pro".to_owned())
    );
    assert!(
        app.billing_row("two@example.com")
            .await
            .contains("sub_two_2"),
        "{}",
        app.billing_row("two@example.com").await
    );
}

/// No list (the default): any subscription grants Pro, as before the list existed.
async fn with_no_list_any_subscription_grants_pro(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now().timestamp();
    let token = linked_user(&app, "basic@example.com", "cus_basic", now - DAY).await;
    let sent = priced(
        "evt_basic",
        now - 3_600,
        ("cus_basic", "sub_basic"),
        "active",
        &[("price_1Basic", product("prod_Basic"))],
    );
    assert_eq!(deliver(&app, &sent).await, "applied");
    assert_eq!(
        tiers(&app, &token, "basic@example.com").await,
        ("pro".to_owned(), "active".to_owned(), "pro".to_owned())
    );
    // An item with no price at all (an old or odd shape) too.
    let token = linked_user(&app, "bare@example.com", "cus_bare", now - DAY).await;
    let bare = crate::helpers::subscription(
        "evt_bare",
        "updated",
        now - 3_600,
        ("cus_bare", "sub_bare"),
        "active",
        now + 20 * DAY,
        true,
    );
    assert_eq!(deliver(&app, &bare).await, "applied");
    assert_eq!(tiers(&app, &token, "bare@example.com").await.0, "pro");
}

/// The flag is stored when a snapshot is written: two servers on one database, one started
/// before the list was set and one after, disagree only until the next event, which rewrites
/// the flag (a changed flag is a changed state, even with nothing else changed).
async fn an_event_after_the_list_changed_rewrites_the_flag(backend: Backend) {
    let before = spawn_app(backend).await;
    let now = chrono::Utc::now().timestamp();
    let token = linked_user(&before, "ann@example.com", "cus_ann", now - DAY).await;
    // The same state but for the list: one period end for both events.
    let basic = |id: &str, created: i64| {
        let mut sent = priced(
            id,
            created,
            ("cus_ann", "sub_ann"),
            "active",
            &[("price_1Basic", product("prod_Basic"))],
        );
        sent["data"]["object"]["items"]["data"][0]["current_period_end"] = json!(now + 20 * DAY);
        sent
    };
    assert_eq!(
        deliver(&before, &basic("evt_1", now - 7_200)).await,
        "applied"
    );
    assert_eq!(tiers(&before, &token, "ann@example.com").await.0, "pro");
    let url = before.db.url.clone();
    let mut settings = crate::helpers::test_settings(&url);
    settings.stripe.pro_prices = api::stripe::prices::ProPrices::parse(LIST).expect("list");
    let (address, _stop) = crate::helpers::start_server(&settings).await;
    let after = before.sibling(address);
    // Rows keep what they were written with until the next event.
    assert_eq!(tiers(&after, &token, "ann@example.com").await.0, "pro");
    assert_eq!(
        deliver(&after, &basic("evt_2", now - 3_600)).await,
        "applied"
    );
    assert_eq!(
        tiers(&after, &token, "ann@example.com").await,
        ("free".to_owned(), "active".to_owned(), "free".to_owned())
    );
    let flags = after
        .db
        .texts(
            "SELECT CASE WHEN price_grants_pro THEN 'listed' ELSE 'unlisted' END \
             FROM stripe_subscriptions WHERE subscription_id = 'sub_ann'",
        )
        .await;
    assert_eq!(flags, ["unlisted"]);
}

/// A malformed entry stops the server before it listens: one `error:` line naming the
/// entry's position, not its value, and a non-zero exit. So does `stripe-sync`.
#[tokio::test]
async fn a_malformed_pro_price_id_stops_the_server() {
    let db = support::TestDb::new(Backend::Sqlite).await;
    for (list, position) in [
        ("price_1ProMonthly,plan_gold", "number 2 of 2"),
        ("prod_Team, ,price_1Pro", "number 2 of 3"),
        ("price_...", "number 1 of 1"),
        ("Pro Monthly", "number 1 of 1"),
    ] {
        for command in ["serve", "stripe-sync"] {
            let output = crate::binary::billing(&[
                ("DATABASE_URL", db.url.as_str()),
                ("BIND_ADDR", "127.0.0.1:0"),
                ("STRIPE_MODE", "test"),
                ("STRIPE_API_KEY", "sk_test_x"),
                ("PRO_PRICE_IDS", list),
            ])
            .arg(command)
            .output()
            .expect("run billing");
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(!output.status.success(), "{command} {list:?}: {printed}");
            let errors: Vec<&str> = printed
                .lines()
                .filter(|l| l.starts_with("error:"))
                .collect();
            assert_eq!(errors.len(), 1, "{command} {list:?}: {printed}");
            assert!(errors[0].contains("PRO_PRICE_IDS"), "{printed}");
            assert!(errors[0].contains(position), "{printed}");
            for value in ["plan_gold", "price_...", "Pro Monthly"] {
                assert!(!printed.contains(value), "{printed}");
            }
            assert!(!printed.contains("panicked"), "{printed}");
        }
    }
}
