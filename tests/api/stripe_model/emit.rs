//! The model's objects and events in Stripe's wire shapes, for either API version.
//!
//! Field sets follow Stripe's published fixtures and spec (github.com/stripe/openapi,
//! `openapi/fixtures3.json`, `openapi/spec3.json`). What differs between the versions
//! (2025-03-31.basil changelog): `current_period_start/end` moved from the subscription to each
//! subscription item, and `invoice.subscription` moved to
//! `invoice.parent.subscription_details.subscription`.

use serde_json::{Value, json};

use super::model::{Checkout, Customer, Invoice, Object, Sent, Shape, Sub, product_of};

pub fn subscription(sub: &Sub, shape: Shape) -> Value {
    let item = |with_period: bool| {
        let mut item = json!({
            "id": format!("si_{}", sub.id), "object": "subscription_item",
            "created": sub.created, "discounts": [], "metadata": {},
            "price": {"id": sub.price, "object": "price", "active": true, "currency": "usd",
                      "product": product_of(sub.price), "type": "recurring",
                      "recurring": {"interval": if sub.interval > 31 * 86_400 { "year" } else { "month" },
                                    "interval_count": 1, "usage_type": "licensed"},
                      "unit_amount": 2000},
            "quantity": 1, "subscription": sub.id, "tax_rates": []
        });
        if with_period {
            item["current_period_start"] = json!(sub.period_start);
            item["current_period_end"] = json!(sub.period_end);
        }
        item
    };
    let basil = shape == Shape::Basil;
    let pause_collection = if sub.collection_paused {
        json!({"behavior": "void", "resumes_at": null})
    } else {
        Value::Null
    };
    let mut object = json!({
        "id": sub.id, "object": "subscription",
        "application": null, "application_fee_percent": null,
        "automatic_tax": {"enabled": false, "liability": null},
        "billing_cycle_anchor": sub.created,
        "cancel_at": if sub.cancel_at_period_end { json!(sub.period_end) } else { Value::Null },
        "cancel_at_period_end": sub.cancel_at_period_end,
        "canceled_at": sub.canceled_at,
        "collection_method": "charge_automatically", "created": sub.created, "currency": "usd",
        "customer": sub.customer, "days_until_due": null, "default_payment_method": null,
        "description": null, "discounts": [], "ended_at": sub.ended_at,
        "latest_invoice": sub.latest_invoice.as_ref().map(|i| i.id.clone()),
        "livemode": false, "metadata": {},
        "pause_collection": pause_collection, "pending_setup_intent": null,
        "pending_update": null, "schedule": null, "start_date": sub.created,
        "status": sub.status.as_str(), "test_clock": null,
        "trial_end": sub.trial_end, "trial_start": sub.trial_end.map(|_| sub.created),
        "items": {"object": "list", "data": [item(basil)], "has_more": false,
                  "url": format!("/v1/subscription_items?subscription={}", sub.id)}
    });
    if !basil {
        object["current_period_start"] = json!(sub.period_start);
        object["current_period_end"] = json!(sub.period_end);
    }
    object
}

pub fn customer(c: &Customer) -> Value {
    if c.deleted {
        // What Stripe returns for a deleted customer (and sends in `customer.deleted` as the
        // last state, with the full object: we keep the id, which is what matters).
        return json!({"id": c.id, "object": "customer", "deleted": true});
    }
    json!({
        "id": c.id, "object": "customer", "address": null, "balance": 0, "created": c.created,
        "currency": "usd", "default_source": null, "delinquent": false, "description": null,
        "discount": null, "email": c.email, "invoice_prefix": "MODEL",
        "invoice_settings": {"custom_fields": null, "default_payment_method": null,
                             "footer": null, "rendering_options": null},
        "livemode": false, "metadata": {}, "name": null, "next_invoice_sequence": 2,
        "phone": null, "preferred_locales": [], "shipping": null, "tax_exempt": "none",
        "test_clock": null
    })
}

/// `user_id`: our user's id, which our Checkout page passes as `client_reference_id`.
pub fn checkout_session(s: &Checkout, user_id: i64, email: &str) -> Value {
    json!({
        "id": s.id, "object": "checkout.session", "mode": "subscription",
        "status": "complete", "payment_status": "paid", "created": s.created,
        "expires_at": s.created + 86_400,
        "client_reference_id": user_id.to_string(), "customer": s.customer,
        "customer_details": {"email": email}, "customer_email": null,
        "subscription": s.subscription, "livemode": false, "metadata": {},
        "success_url": "https://example.com/success", "url": null
    })
}

pub fn invoice(inv: &Invoice, sub: &str, customer: &str, shape: Shape) -> Value {
    let mut object = json!({
        "id": inv.id, "object": "invoice", "customer": customer, "status": inv.status,
        "created": inv.created, "period_start": inv.period_start, "period_end": inv.period_end,
        "billing_reason": inv.billing_reason, "collection_method": "charge_automatically",
        "attempt_count": inv.attempt_count, "attempted": inv.attempt_count > 0,
        "next_payment_attempt": inv.next_payment_attempt,
        "amount_due": 2000, "amount_paid": if inv.status == "paid" { 2000 } else { 0 },
        "currency": "usd", "livemode": false,
        // A renewal invoice is finalized, and its payment first attempted, about an hour
        // after it is created; a first invoice at once (docs.stripe.com/billing/invoices/
        // subscription, "Subscription invoice lifecycle"). A failure's time is then the
        // finalization's, for an attempted invoice that is still open.
        "status_transitions": {"finalized_at": (inv.status != "draft").then_some(inv.finalized_at()),
                               "paid_at": inv.paid_at, "voided_at": null,
                               "marked_uncollectible_at": null}
    });
    match shape {
        Shape::Legacy => object["subscription"] = json!(sub),
        Shape::Basil => {
            object["parent"] = json!({"type": "subscription_details", "quote_details": null,
                "subscription_details": {"subscription": sub, "metadata": {}}})
        }
    }
    object
}

/// The event as Stripe delivers it.
/// `users`: each model user's id and e-mail in our database.
pub fn event(sent: &Sent, shape: Shape, users: &[(i64, String)]) -> Value {
    let object = match &sent.object {
        Object::Sub(s) => subscription(s, shape),
        Object::Customer(c) => customer(c),
        Object::Checkout(s) => checkout_session(s, users[s.user].0, &users[s.user].1),
        Object::Invoice(inv, sub) => invoice(inv, sub, &sent.customer, shape),
    };
    json!({
        "id": sent.id, "object": "event", "api_version": shape.api_version(),
        "created": sent.created, "data": {"object": object}, "livemode": false,
        "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
        "type": sent.kind.as_str()
    })
}
