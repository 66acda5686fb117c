//! A Stripe API that serves the model's state at a chosen instant, in Stripe's shapes, with a
//! `Date` header telling that instant (Stripe's clock, as `stripe-sync` sees it): the
//! customers, subscriptions, completed Checkout Sessions and invoices (one by one, and a
//! subscription's, `GET /v1/invoices?subscription=…`) `stripe-sync` reads,
//! paginated as Stripe does (`limit`, `starting_after`, `has_more`, newest first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use super::emit;
use super::model::{History, Object, Sub};

pub const KEY: &str = "sk_test_model0123456789abcdefghijklmnopqrstuvwxyz";

struct Served {
    history: Arc<History>,
    users: Vec<(i64, String)>,
    /// Stripe's clock: the instant whose state is served.
    now: i64,
}

pub struct FakeApi {
    pub base: String,
    served: Arc<Mutex<Served>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeApi {
    pub async fn start(history: Arc<History>, users: Vec<(i64, String)>) -> Self {
        let served = Arc::new(Mutex::new(Served {
            now: history.start,
            history,
            users,
        }));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(served.clone());
        let (base, stop) = crate::fake_stripe::serve_on_loopback(app).await;
        Self {
            base,
            served,
            stop: Some(stop),
        }
    }

    /// Serves Stripe's state at `now` from here on.
    pub fn set_now(&self, now: i64) {
        self.served.lock().expect("served").now = now;
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"type": "invalid_request_error", "message": message}});
    (status, Json(body)).into_response()
}

/// RFC 9110's IMF-fixdate, as Stripe's `Date` header carries it.
fn http_date(at: i64) -> String {
    Utc.timestamp_opt(at, 0)
        .single()
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default()
}

async fn answer(
    State(served): State<Arc<Mutex<Served>>>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let served = served.lock().expect("served");
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut response = if bearer != Some(KEY) {
        error(StatusCode::UNAUTHORIZED, "Invalid API Key provided")
    } else {
        route(&served, uri.path(), &query)
    };
    if let Ok(date) = HeaderValue::from_str(&http_date(served.now)) {
        response.headers_mut().insert(header::DATE, date);
    }
    response
}

fn route(served: &Served, path: &str, query: &[(String, String)]) -> Response {
    let h = &served.history;
    let shape = h.shape;
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let expand_invoice = query
        .iter()
        .any(|(k, v)| k.starts_with("expand") && v.ends_with("latest_invoice"));
    // The latest version of every object at `now`, newest first (Stripe's list order).
    let mut latest: HashMap<String, (i64, &Object)> = HashMap::new();
    let mut created: HashMap<String, i64> = HashMap::new();
    for (at, object) in h.versions.iter().take_while(|(at, _)| *at <= served.now) {
        let id = match object {
            Object::Sub(s) => s.id.clone(),
            Object::Customer(c) => c.id.clone(),
            Object::Checkout(s) => s.id.clone(),
            Object::Invoice(i, _) => i.id.clone(),
        };
        created.entry(id.clone()).or_insert(*at);
        latest.insert(id, (*at, object));
    }
    let mut objects: Vec<(&String, &Object)> = latest.iter().map(|(id, (_, o))| (id, *o)).collect();
    objects.sort_by_key(|(id, _)| std::cmp::Reverse((created[*id], (*id).clone())));
    let invoice_json = |id: &str| {
        latest.get(id).and_then(|(_, o)| match o {
            Object::Invoice(inv, sub) => {
                let customer = objects.iter().find_map(|(_, o)| match o {
                    Object::Sub(s) if &s.id == sub => Some(s.customer.clone()),
                    _ => None,
                })?;
                Some(emit::invoice(inv, sub, &customer, shape))
            }
            _ => None,
        })
    };
    // A subscription as served: its latest invoice expanded when `expand[]` asks for it (a
    // list's `data.latest_invoice`, one object's `latest_invoice`, as stripe-sync reads them).
    let subscription_json = |s: &Sub| {
        let mut json = emit::subscription(s, shape);
        if expand_invoice
            && let Some(inv) = s.latest_invoice.as_ref().and_then(|i| invoice_json(&i.id))
        {
            json["latest_invoice"] = inv;
        }
        json
    };
    match path {
        "/v1/customers" => {
            let data = objects
                .iter()
                .filter_map(|(_, o)| match o {
                    Object::Customer(c) if !c.deleted => Some(c),
                    _ => None,
                })
                // Stripe's `email` filter is exact and case-sensitive.
                .filter(|c| param("email").is_none_or(|e| c.email == e))
                .map(emit::customer)
                .collect();
            list(path, data, query)
        }
        "/v1/subscriptions" => {
            let data = objects
                .iter()
                .filter_map(|(_, o)| match o {
                    Object::Sub(s) => Some(s),
                    _ => None,
                })
                .filter(|s| param("customer").is_none_or(|c| s.customer == c))
                .filter(|s| match param("status") {
                    Some("all") => true,
                    // Stripe's default leaves ended subscriptions out.
                    None => !s.status.is_final(),
                    Some(wanted) => s.status.as_str() == wanted,
                })
                .map(&subscription_json)
                .collect();
            list(path, data, query)
        }
        "/v1/invoices" => {
            // Newest first, filtered by `subscription`, `customer` and `status` as Stripe's
            // list filters them.
            let data = objects
                .iter()
                .filter_map(|(id, o)| match o {
                    Object::Invoice(inv, sub) => Some((id, inv, sub)),
                    _ => None,
                })
                .filter(|(_, _, sub)| param("subscription").is_none_or(|s| *sub == s))
                .filter(|(_, inv, _)| param("status").is_none_or(|st| inv.status == st))
                .filter_map(|(id, _, _)| invoice_json(id))
                .filter(|inv| param("customer").is_none_or(|c| inv["customer"] == c))
                .collect();
            list(path, data, query)
        }
        "/v1/checkout/sessions" => {
            let data = objects
                .iter()
                .filter_map(|(_, o)| match o {
                    Object::Checkout(s) => Some(s),
                    _ => None,
                })
                .filter(|s| param("customer").is_none_or(|c| s.customer == c))
                .filter(|s| param("subscription").is_none_or(|c| s.subscription == c))
                .filter(|_| param("status").is_none_or(|st| st == "complete"))
                .map(|s| {
                    let (id, email) = &served.users[s.user];
                    emit::checkout_session(s, *id, email)
                })
                .collect();
            list(path, data, query)
        }
        _ => {
            if let Some(id) = path.strip_prefix("/v1/customers/") {
                return match latest.get(id) {
                    Some((_, Object::Customer(c))) => Json(emit::customer(c)).into_response(),
                    _ => error(StatusCode::NOT_FOUND, &format!("No such customer: '{id}'")),
                };
            }
            if let Some(id) = path.strip_prefix("/v1/invoices/") {
                return match invoice_json(id) {
                    Some(inv) => Json(inv).into_response(),
                    None => error(StatusCode::NOT_FOUND, &format!("No such invoice: '{id}'")),
                };
            }
            if let Some(id) = path.strip_prefix("/v1/subscriptions/") {
                return match latest.get(id) {
                    Some((_, Object::Sub(s))) => Json(subscription_json(s)).into_response(),
                    _ => error(
                        StatusCode::NOT_FOUND,
                        &format!("No such subscription: '{id}'"),
                    ),
                };
            }
            error(StatusCode::NOT_FOUND, "Unrecognized request URL")
        }
    }
}

/// Two objects a page at most, whatever `limit` asks: several pages are followed.
const PAGE: usize = 2;

fn list(url: &str, objects: Vec<Value>, query: &[(String, String)]) -> Response {
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit: usize = param("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
    let start = match param("starting_after") {
        Some(after) => match objects.iter().position(|o| o["id"] == after) {
            Some(at) => at + 1,
            None => return error(StatusCode::BAD_REQUEST, "starting_after names no object"),
        },
        None => 0,
    };
    let page: Vec<Value> = objects
        .iter()
        .skip(start)
        .take(limit.clamp(1, PAGE))
        .cloned()
        .collect();
    let has_more = start + page.len() < objects.len();
    Json(json!({"object": "list", "data": page, "has_more": has_more, "url": url})).into_response()
}
