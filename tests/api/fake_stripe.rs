//! An in-process Stripe for `stripe-sync`: `GET /v1/customers`, `GET /v1/customers/{id}`,
//! `GET /v1/subscriptions`, `GET /v1/subscriptions/{id}`, `GET /v1/checkout/sessions` and
//! `GET /v1/invoices` (`subscription=`, `customer=`, `status=`; newest first),
//! paginated as Stripe does (`limit`, `starting_after`, `has_more`), with objects and list
//! envelopes shaped like those in Stripe's published fixtures (github.com/stripe/openapi,
//! `openapi/fixtures3.json`; API 2025-03-31 "basil" and later, where the period end is on
//! each item), bearer-key checks, and faults on demand.
//!
//! As Stripe does: deleted customers leave the list, and asking for one answers
//! `{"id", "object": "customer", "deleted": true}`; every answer carries a `Date` header, from
//! Stripe's clock, which a test may set apart from the host's (a host whose clock is wrong is
//! modelled by a Stripe clock that differs from it).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An answer given instead of the real one, to the next request for `path`.
pub struct Fault {
    pub path: &'static str,
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Fault {
    pub fn new(path: &'static str, status: u16) -> Self {
        Self {
            path,
            status,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

#[derive(Default)]
struct Data {
    key: String,
    page_size: usize,
    customers: Vec<Value>,
    subscriptions: Vec<Value>,
    sessions: Vec<Value>,
    invoices: Vec<Value>,
    /// Customers deleted at Stripe: out of the list, `deleted: true` when asked for.
    deleted: Vec<String>,
    /// Stripe's clock: a fixed time, or the host's when unset.
    clock: Option<i64>,
    faults: VecDeque<Fault>,
    /// Every request, as `GET /path?query`.
    log: Vec<String>,
}

pub struct FakeStripe {
    pub base: String,
    data: Arc<Mutex<Data>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeStripe {
    /// Accepts `key`; lists at most `page_size` objects a page (fewer than the `limit` asked
    /// for, as Stripe may, so that several pages are followed).
    pub async fn start(key: &str, page_size: usize) -> Self {
        let data = Arc::new(Mutex::new(Data {
            key: key.to_owned(),
            page_size,
            ..Data::default()
        }));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(data.clone());
        let (base, stop) = serve_on_loopback(app).await;
        Self {
            base,
            data,
            stop: Some(stop),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Data) -> T) -> T {
        f(&mut self.data.lock().expect("fake Stripe state"))
    }

    pub fn add_customer(&self, customer: Value) {
        self.with(|d| d.customers.push(customer));
    }

    /// Adds the subscription, or replaces the one with its id (a change at Stripe).
    pub fn put_subscription(&self, subscription: Value) {
        self.with(|d| {
            match d
                .subscriptions
                .iter_mut()
                .find(|s| s["id"] == subscription["id"])
            {
                Some(existing) => *existing = subscription,
                None => d.subscriptions.push(subscription),
            }
        });
    }

    /// Adds the invoice, or replaces the one with its id. It names its subscription in either
    /// API version's shape (`subscription`, or `parent.subscription_details.subscription`).
    pub fn put_invoice(&self, invoice: Value) {
        self.with(|d| {
            d.invoices.retain(|i| i["id"] != invoice["id"]);
            d.invoices.push(invoice);
        });
    }

    /// A completed Checkout Session (listed with `status=complete`).
    pub fn add_checkout_session(&self, session: Value) {
        self.with(|d| d.sessions.push(session));
    }

    /// Deletes the customer, as `DELETE /v1/customers/{id}` would.
    pub fn delete_customer(&self, id: &str) {
        self.with(|d| {
            d.customers.retain(|c| c["id"] != id);
            d.deleted.push(id.to_owned());
        });
    }

    /// Stripe's clock from now on: `Some(seconds since the epoch)`, or the host's.
    pub fn set_clock(&self, at: Option<i64>) {
        self.with(|d| d.clock = at);
    }

    pub fn fail_next(&self, fault: Fault) {
        self.with(|d| d.faults.push_back(fault));
    }

    /// The requests so far; cleared.
    pub fn take_log(&self) -> Vec<String> {
        self.with(|d| std::mem::take(&mut d.log))
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    let body = json!({"error": {"type": kind, "code": code, "message": message,
                                "doc_url": "https://docs.stripe.com/error-codes"}});
    (status, Json(body)).into_response()
}

async fn answer(
    State(data): State<Arc<Mutex<Data>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut data = data.lock().expect("fake Stripe state");
    data.log.push(format!("{method} {uri}"));
    let now = data.clock.unwrap_or_else(|| chrono::Utc::now().timestamp());
    let mut response = route(&mut data, &method, &uri, &headers, &query);
    // An HTTP-date, as Stripe (and every HTTP server) sends it; ours replaces the one the
    // server would add from the host's clock.
    let date = chrono::DateTime::from_timestamp(now, 0)
        .expect("a date")
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    response.headers_mut().insert(
        axum::http::header::DATE,
        HeaderValue::from_str(&date).expect("date header"),
    );
    response
}

fn route(
    data: &mut Data,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Response {
    let path = uri.path();
    if let Some(at) = data.faults.iter().position(|f| f.path == path) {
        let fault = data.faults.remove(at).expect("fault");
        let status = StatusCode::from_u16(fault.status).expect("status");
        let mut response = error(status, "api_error", None, "injected by the test");
        for (name, value) in fault.headers {
            response.headers_mut().insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        return response;
    }
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if presented != data.key {
        // Stripe masks all but the end of the key; echoing it whole proves we never print it.
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            &format!("Invalid API Key provided: {presented}"),
        );
    }
    if *method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            None,
            "only GET here",
        );
    }
    match path {
        "/v1/customers" => list(data, path, data.customers.clone(), query),
        "/v1/checkout/sessions" => {
            let wanted = data
                .sessions
                .iter()
                .filter(|s| of_customer(query, s))
                .filter(|s| {
                    query
                        .get("status")
                        .is_none_or(|wanted| s["status"].as_str() == Some(wanted.as_str()))
                })
                .cloned()
                .collect();
            list(data, path, wanted, query)
        }
        "/v1/invoices" => {
            let mut wanted: Vec<Value> = data
                .invoices
                .iter()
                .filter(|i| of_customer(query, i))
                .filter(|i| {
                    query
                        .get("subscription")
                        .is_none_or(|wanted| invoice_subscription(i) == Some(wanted.as_str()))
                })
                .filter(|i| {
                    query
                        .get("status")
                        .is_none_or(|wanted| i["status"].as_str() == Some(wanted.as_str()))
                })
                .cloned()
                .collect();
            // Stripe lists invoices newest first.
            wanted.sort_by_key(|i| std::cmp::Reverse(i["created"].as_i64()));
            list(data, path, wanted, query)
        }
        "/v1/subscriptions" => {
            let wanted = data
                .subscriptions
                .iter()
                .filter(|s| of_customer(query, s))
                .filter(|s| {
                    let status = s["status"].as_str().unwrap_or("");
                    match query.get("status").map(String::as_str) {
                        Some("all") => true,
                        // Stripe's default leaves ended subscriptions out.
                        None => !matches!(status, "canceled" | "incomplete_expired"),
                        Some(wanted) => status == wanted,
                    }
                })
                .map(|s| expanded(s, query, "data.latest_invoice"))
                .collect();
            list(data, path, wanted, query)
        }
        _ if path.starts_with("/v1/subscriptions/") => {
            let id = &path["/v1/subscriptions/".len()..];
            match data.subscriptions.iter().find(|s| s["id"] == id) {
                Some(subscription) => {
                    Json(expanded(subscription, query, "latest_invoice")).into_response()
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such subscription: '{id}'"),
                ),
            }
        }
        _ => match path.strip_prefix("/v1/customers/") {
            Some(id) => match data.customers.iter().find(|c| c["id"] == id) {
                Some(customer) => Json(customer.clone()).into_response(),
                None if data.deleted.iter().any(|d| d == id) => {
                    Json(json!({"id": id, "object": "customer", "deleted": true})).into_response()
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such customer: '{id}'"),
                ),
            },
            None => error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                "Unrecognized request URL",
            ),
        },
    }
}

/// A subscription as Stripe serves it: `latest_invoice` is the invoice's id unless the request
/// asks `expand[]=<field>` (`data.latest_invoice` for a list's items), then the invoice
/// itself, as the test stored it.
fn expanded(subscription: &Value, query: &HashMap<String, String>, field: &str) -> Value {
    let mut served = subscription.clone();
    let asked = query.get("expand[]").is_some_and(|f| f == field);
    if !asked && let Some(id) = served["latest_invoice"].get("id").cloned() {
        served["latest_invoice"] = id;
    }
    served
}

/// The subscription an invoice belongs to: `parent.subscription_details.subscription` since
/// API 2025-03-31 "basil", `subscription` before.
fn invoice_subscription(invoice: &Value) -> Option<&str> {
    invoice
        .pointer("/parent/subscription_details/subscription")
        .or_else(|| invoice.get("subscription"))
        .and_then(Value::as_str)
}

/// Whether `object` passes a list's `customer=` filter (no filter: every object does).
fn of_customer(query: &HashMap<String, String>, object: &Value) -> bool {
    query
        .get("customer")
        .is_none_or(|c| object["customer"].as_str() == Some(c.as_str()))
}

/// One page of `objects` in Stripe's list envelope.
fn list(data: &Data, url: &str, objects: Vec<Value>, query: &HashMap<String, String>) -> Response {
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(10);
    let start = match query.get("starting_after") {
        Some(after) => match objects.iter().position(|o| o["id"] == after.as_str()) {
            Some(at) => at + 1,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("resource_missing"),
                    "starting_after names no object of this list",
                );
            }
        },
        None => 0,
    };
    let size = limit.min(data.page_size);
    let page: Vec<Value> = objects.iter().skip(start).take(size).cloned().collect();
    let has_more = start + page.len() < objects.len();
    Json(json!({"object": "list", "data": page, "has_more": has_more, "url": url})).into_response()
}

/// A customer object, as Stripe returns it.
pub fn customer(id: &str, email: Option<&str>, user_id: Option<&str>) -> Value {
    let metadata = match user_id {
        Some(user_id) => json!({"user_id": user_id}),
        None => json!({}),
    };
    json!({
        "id": id, "object": "customer",
        "address": null, "balance": 0, "created": 1_721_948_000, "currency": "usd",
        "default_source": null, "delinquent": false, "description": null, "discount": null,
        "email": email, "invoice_prefix": "7FE1103",
        "invoice_settings": {"custom_fields": null, "default_payment_method": null,
                             "footer": null, "rendering_options": null},
        "livemode": false, "metadata": metadata, "name": null, "next_invoice_sequence": 1,
        "phone": null, "preferred_locales": [], "shipping": null, "tax_exempt": "none",
        "test_clock": null
    })
}

/// A completed Checkout Session in subscription mode, opened for `user_id` (our checkout puts
/// the user's id in `client_reference_id`), that created `customer` and `subscription`.
pub fn checkout_session(id: &str, user_id: &str, customer: &str, subscription: &str) -> Value {
    let mut session = json!({
        "id": id, "object": "checkout.session",
        "after_expiration": null, "allow_promotion_codes": null,
        "amount_subtotal": 2000, "amount_total": 2000,
        "automatic_tax": {"enabled": false, "liability": null, "status": null, "provider": null},
        "billing_address_collection": null, "cancel_url": "https://example.com/cancel",
        "client_reference_id": user_id, "client_secret": null,
        "consent": null, "consent_collection": null, "created": 1_721_948_000,
        "currency": "usd", "custom_fields": [],
        "custom_text": {"after_submit": null, "shipping_address": null, "submit": null,
                        "terms_of_service_acceptance": null},
        "customer": customer, "customer_creation": "always",
        "customer_details": {"address": null, "email": "payer@example.com", "name": null,
                             "phone": null, "tax_exempt": "none", "tax_ids": []},
        "customer_email": null, "expires_at": 1_722_034_400
    });
    let rest = json!({
        "invoice": "in_1", "invoice_creation": null, "livemode": false, "locale": null,
        "metadata": {}, "mode": "subscription", "payment_intent": null, "payment_link": null,
        "payment_method_collection": "always", "payment_method_configuration_details": null,
        "payment_method_options": {}, "payment_method_types": ["card"],
        "payment_status": "paid", "phone_number_collection": {"enabled": false},
        "recovered_from": null, "setup_intent": null, "shipping_address_collection": null,
        "shipping_cost": null, "shipping_options": [], "status": "complete",
        "submit_type": null, "subscription": subscription,
        "success_url": "https://example.com/success", "total_details": null,
        "ui_mode": "hosted", "url": null
    });
    // Two literals: one would pass serde_json's macro recursion limit.
    if let (Some(session), Value::Object(rest)) = (session.as_object_mut(), rest) {
        session.extend(rest);
    }
    session
}

/// A subscription object with one item whose period ends at `period_end`.
pub fn subscription(id: &str, customer: &str, status: &str, period_end: i64) -> Value {
    let start = period_end - 30 * 86_400;
    let ended = matches!(status, "canceled" | "incomplete_expired");
    let ended_at = if ended {
        json!(start + 86_400)
    } else {
        Value::Null
    };
    let item = json!({
        "id": format!("si_{id}"), "object": "subscription_item", "created": start,
        "current_period_end": period_end, "current_period_start": start,
        "discounts": [], "metadata": {},
        "price": {"id": "price_pro_monthly", "object": "price", "active": true,
                  "currency": "usd", "product": "prod_pro", "type": "recurring",
                  "recurring": {"interval": "month", "interval_count": 1,
                                "usage_type": "licensed"},
                  "unit_amount": 2000},
        "quantity": 1, "subscription": id, "tax_rates": []
    });
    let mut object = json!({
        "id": id, "object": "subscription",
        "application": null, "application_fee_percent": null,
        "automatic_tax": {"enabled": false, "liability": null, "disabled_reason": null},
        "billing_cycle_anchor": start, "billing_mode": {"type": "classic"},
        "cancel_at": null, "cancel_at_period_end": false, "canceled_at": ended_at,
        "collection_method": "charge_automatically", "created": start, "currency": "usd",
        "customer": customer, "days_until_due": null, "default_payment_method": null,
        "description": null, "discounts": [], "ended_at": ended_at,
        "latest_invoice": null, "livemode": false, "metadata": {},
        "pause_collection": null, "pending_setup_intent": null, "pending_update": null,
        "schedule": null, "start_date": start, "status": status, "test_clock": null,
        "trial_end": null, "trial_start": null
    });
    object["items"] = json!({
        "object": "list",
        "data": [item],
        "has_more": false,
        "url": format!("/v1/subscription_items?subscription={id}")
    });
    object
}

/// A renewal invoice of `customer`'s `subscription` (basil shape), created at `created`,
/// finalized and first charged an hour later, in `status` after `attempts` charges.
pub fn invoice(
    id: &str,
    (customer, subscription): (&str, &str),
    status: &str,
    attempts: u32,
    created: i64,
) -> Value {
    let finalized = (status != "draft").then_some(created + 3_600);
    json!({
        "id": id, "object": "invoice", "customer": customer, "status": status,
        "created": created, "period_start": created, "period_end": created + 30 * 86_400,
        "billing_reason": "subscription_cycle", "collection_method": "charge_automatically",
        "attempt_count": attempts, "attempted": attempts > 0,
        "amount_due": 2000, "amount_paid": if status == "paid" { 2000 } else { 0 },
        "currency": "usd", "livemode": false,
        "parent": {"type": "subscription_details", "quote_details": null,
                   "subscription_details": {"subscription": subscription, "metadata": {}}},
        "status_transitions": {"finalized_at": finalized,
                               "paid_at": (status == "paid").then_some(created + 3_600),
                               "voided_at": null, "marked_uncollectible_at": null}
    })
}

/// Serves `app` on a free loopback port until the returned sender is dropped or fired; returns
/// its base URL. Shared by the fakes of Stripe's API (this one and the Stripe model's).
pub async fn serve_on_loopback(app: axum::Router) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a fake Stripe");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    (base, stop)
}
