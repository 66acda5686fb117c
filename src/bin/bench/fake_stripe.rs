//! A fake of the Stripe list endpoints `billing stripe-sync` reads, at any size: customers,
//! completed Checkout Sessions and subscriptions are made up from their index as they are
//! served (the fake holds nothing per object, so a million customers cost it no memory), in
//! Stripe's shapes (those of tests/api/fake_stripe.rs), 100 a page, and written as text
//! (serde_json's tree for every object would cost the fake more CPU than the client it
//! serves, on the same two cores).
//!
//! Customer `i` (1..=n) belongs to user `i` (`u<i>@bench.test`, as `load::populate` makes
//! them), and is linked three ways: every tenth (`i % 10 == 0`) by a completed Checkout
//! Session naming user `i` in `client_reference_id`, the next one (`i % 10 == 1`) only by its
//! e-mail, every other by `metadata.user_id`. Each has one active subscription of the Pro
//! price, its latest invoice paid (expanded when asked, as Stripe does).
//!
//! Requests over the rate are refused as Stripe refuses them: 429 with its `rate_limit`
//! error body, and no `Stripe-Should-Retry` header (Stripe's clients retry a 429 by its
//! status). The rate is a token bucket refilled `rate` times a second that holds a tenth of a
//! second's worth: a client keeping to the rate is never refused.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// What the fake served.
#[derive(Default)]
pub struct Served {
    /// Answered with objects.
    pub answered: AtomicU64,
    /// Refused with 429.
    pub refused: AtomicU64,
}

struct Fake {
    customers: u64,
    served: Arc<Served>,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

const PAGE: u64 = 100;
/// The Pro price every subscription is on (`PRO_PRICE_IDS` of the run).
pub const PRO_PRICE: &str = "price_1BenchPro";
/// Checkout Sessions link every tenth customer.
const SESSION_EVERY: u64 = 10;

/// Serves the fake for `customers` customers at `rate` requests a second; returns its base
/// URL, its counters and the sender that stops it.
pub async fn start(
    customers: u64,
    rate: u32,
) -> Result<(String, Arc<Served>, tokio::sync::oneshot::Sender<()>), String> {
    let served = Arc::new(Served::default());
    let rate = f64::from(rate.max(1));
    let fake = Arc::new(Fake {
        customers,
        served: served.clone(),
        bucket: Mutex::new(Bucket {
            rate,
            capacity: (rate / 10.0).max(1.0),
            tokens: (rate / 10.0).max(1.0),
            at: Instant::now(),
        }),
    });
    let app = axum::Router::new().fallback(answer).with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("fake Stripe: bind: {e}"))?;
    let base = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok((base, served, stop))
}

async fn answer(
    State(fake): State<Arc<Fake>>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let allowed = fake.bucket.lock().map(|mut b| b.take()).unwrap_or(true);
    let mut response = if !allowed {
        fake.served.refused.fetch_add(1, Ordering::Relaxed);
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit",
            "Request rate limit exceeded. Learn more about rate limits here \
             https://stripe.com/docs/rate-limits.",
        )
    } else {
        fake.served.answered.fetch_add(1, Ordering::Relaxed);
        route(&fake, uri.path(), &query)
    };
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    if let Ok(date) = HeaderValue::from_str(&date) {
        response.headers_mut().insert(header::DATE, date);
    }
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        r#"{{"error":{{"code":"{code}","doc_url":"https://stripe.com/docs/error-codes/{code}","message":"{message}","type":"invalid_request_error"}}}}"#
    );
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Writes object `i` of a list (expanded or not) at the end of a page.
type WriteObject = fn(&mut String, u64, bool);

fn route(fake: &Fake, path: &str, query: &HashMap<String, String>) -> Response {
    let n = fake.customers;
    let after = query.get("starting_after").map(String::as_str);
    let expand = query.get("expand[]").map(String::as_str) == Some("data.latest_invoice");
    let (url, first, step, write): (&str, u64, u64, WriteObject) = match path {
        "/v1/customers" => ("/v1/customers", 1, 1, customer),
        "/v1/checkout/sessions" => (
            "/v1/checkout/sessions",
            SESSION_EVERY,
            SESSION_EVERY,
            session,
        ),
        "/v1/subscriptions" => ("/v1/subscriptions", 1, 1, subscription),
        // No subscription here is past due: nothing asks for invoices or single objects.
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "resource_missing",
                "Unrecognized request URL",
            );
        }
    };
    let start = match after.map(index) {
        None => first,
        Some(Some(i)) => i + step,
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "resource_missing",
                "starting_after names no object of this list",
            );
        }
    };
    let mut body = String::with_capacity(220_000);
    body.push_str(r#"{"object":"list","data":["#);
    let mut i = start;
    let mut count = 0;
    while i <= n && count < PAGE {
        if count > 0 {
            body.push(',');
        }
        write(&mut body, i, expand);
        i += step;
        count += 1;
    }
    let has_more = i <= n;
    let _ = write!(body, r#"],"has_more":{has_more},"url":"{url}"}}"#);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The index in an id made by this fake (`cus_B0000000000042` → 42).
fn index(id: &str) -> Option<u64> {
    id.rsplit_once('_')?.1.strip_prefix('B')?.parse().ok()
}

fn customer(out: &mut String, i: u64, _: bool) {
    let metadata = if i.is_multiple_of(SESSION_EVERY) || i % SESSION_EVERY == 1 {
        String::new()
    } else {
        format!(r#""user_id":"{i}""#)
    };
    let _ = write!(
        out,
        r#"{{"id":"cus_B{i:013}","object":"customer","address":null,"balance":0,"created":1721948000,"currency":"usd","default_source":null,"delinquent":false,"description":null,"discount":null,"email":"u{i}@bench.test","invoice_prefix":"7FE1103","invoice_settings":{{"custom_fields":null,"default_payment_method":null,"footer":null,"rendering_options":null}},"livemode":false,"metadata":{{{metadata}}},"name":null,"next_invoice_sequence":1,"phone":null,"preferred_locales":[],"shipping":null,"tax_exempt":"none","test_clock":null}}"#
    );
}

fn session(out: &mut String, i: u64, _: bool) {
    let _ = write!(
        out,
        r#"{{"id":"cs_test_B{i:013}","object":"checkout.session","after_expiration":null,"allow_promotion_codes":null,"amount_subtotal":2000,"amount_total":2000,"automatic_tax":{{"enabled":false,"liability":null,"status":null,"provider":null}},"billing_address_collection":null,"cancel_url":"https://example.com/cancel","client_reference_id":"{i}","client_secret":null,"consent":null,"consent_collection":null,"created":1721948000,"currency":"usd","custom_fields":[],"customer":"cus_B{i:013}","customer_creation":"always","customer_details":{{"address":null,"email":"u{i}@bench.test","name":null,"phone":null,"tax_exempt":"none","tax_ids":[]}},"customer_email":null,"expires_at":1722034400,"invoice":"in_B{i:013}","livemode":false,"locale":null,"metadata":{{}},"mode":"subscription","payment_intent":null,"payment_link":null,"payment_method_collection":"always","payment_method_types":["card"],"payment_status":"paid","status":"complete","submit_type":null,"subscription":"sub_B{i:013}","success_url":"https://example.com/success","total_details":null,"ui_mode":"hosted","url":null}}"#
    );
}

/// Period ends fixed in the future (2033, before any backend's limit of 2038), so that every
/// run applies the same state.
const PERIOD_END: i64 = 2_000_000_000;

fn subscription(out: &mut String, i: u64, expand: bool) {
    let start = PERIOD_END - 30 * 86_400;
    let invoice = if expand {
        format!(
            r#"{{"id":"in_B{i:013}","object":"invoice","customer":"cus_B{i:013}","status":"paid","created":{start},"period_start":{start},"period_end":{PERIOD_END},"billing_reason":"subscription_cycle","collection_method":"charge_automatically","attempt_count":1,"attempted":true,"amount_due":2000,"amount_paid":2000,"currency":"usd","livemode":false,"parent":{{"type":"subscription_details","quote_details":null,"subscription_details":{{"subscription":"sub_B{i:013}","metadata":{{}}}}}},"status_transitions":{{"finalized_at":{start},"paid_at":{start},"voided_at":null,"marked_uncollectible_at":null}}}}"#
        )
    } else {
        format!(r#""in_B{i:013}""#)
    };
    let _ = write!(
        out,
        r#"{{"id":"sub_B{i:013}","object":"subscription","application":null,"application_fee_percent":null,"automatic_tax":{{"enabled":false,"liability":null,"disabled_reason":null}},"billing_cycle_anchor":{start},"billing_mode":{{"type":"classic"}},"cancel_at":null,"cancel_at_period_end":false,"canceled_at":null,"collection_method":"charge_automatically","created":{start},"currency":"usd","customer":"cus_B{i:013}","days_until_due":null,"default_payment_method":null,"description":null,"discounts":[],"ended_at":null,"items":{{"object":"list","data":[{{"id":"si_B{i:013}","object":"subscription_item","created":{start},"current_period_end":{PERIOD_END},"current_period_start":{start},"discounts":[],"metadata":{{}},"price":{{"id":"{PRO_PRICE}","object":"price","active":true,"currency":"usd","product":"prod_1BenchPro","type":"recurring","recurring":{{"interval":"month","interval_count":1,"usage_type":"licensed"}},"unit_amount":2000}},"quantity":1,"subscription":"sub_B{i:013}","tax_rates":[]}}],"has_more":false,"url":"/v1/subscription_items?subscription=sub_B{i:013}"}},"latest_invoice":{invoice},"livemode":false,"metadata":{{}},"pause_collection":null,"pending_setup_intent":null,"pending_update":null,"schedule":null,"start_date":{start},"status":"active","test_clock":null,"trial_end":null,"trial_start":null}}"#
    );
}
