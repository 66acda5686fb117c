//! An in-process Stripe for `stripe-sync`: `GET /v1/customers`, `GET /v1/customers/{id}` and
//! `GET /v1/subscriptions`, paginated as Stripe does (`limit`, `starting_after`, `has_more`),
//! with objects and list envelopes shaped like those in Stripe's published fixtures
//! (github.com/stripe/openapi, `openapi/fixtures3.json`; API 2025-03-31 "basil" and later,
//! where the period end is on each item), bearer-key checks, and faults on demand.

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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake Stripe");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
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
    if method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            None,
            "only GET here",
        );
    }
    match path {
        "/v1/customers" => list(&data, path, data.customers.clone(), &query),
        "/v1/subscriptions" => {
            let wanted = data
                .subscriptions
                .iter()
                .filter(|s| {
                    query
                        .get("customer")
                        .is_none_or(|c| s["customer"].as_str() == Some(c.as_str()))
                })
                .filter(|s| {
                    let status = s["status"].as_str().unwrap_or("");
                    match query.get("status").map(String::as_str) {
                        Some("all") => true,
                        // Stripe's default leaves ended subscriptions out.
                        None => !matches!(status, "canceled" | "incomplete_expired"),
                        Some(wanted) => status == wanted,
                    }
                })
                .cloned()
                .collect();
            list(&data, path, wanted, &query)
        }
        _ => match path.strip_prefix("/v1/customers/") {
            Some(id) => match data.customers.iter().find(|c| c["id"] == id) {
                Some(customer) => Json(customer.clone()).into_response(),
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
