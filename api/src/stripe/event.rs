//! The Stripe events we act on, parsed from the webhook body.

use chrono::{DateTime, TimeZone, Utc};
use entity::SubscriptionStatus;
use serde_json::Value;

use crate::stripe::prices::ProPrices;

/// The envelope every Stripe event shares.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: String,
    /// Whole seconds since the epoch.
    pub created: i64,
    /// `livemode`: whether the event comes from live mode (false: test mode). Stripe sets it on
    /// every event, snapshot or thin; None when absent.
    pub livemode: Option<bool>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `checkout.session.completed`: the customer (and subscription) of our user.
    LinkCustomer {
        user_id: Option<i64>,
        customer: Option<String>,
        subscription: Option<String>,
    },
    /// `customer.subscription.created|updated|deleted|paused|resumed`.
    Subscription(Snapshot),
    /// `customer.deleted`.
    CustomerDeleted { customer: String },
    /// Any other type, or a thin event (no `data.object`): acknowledged and logged.
    Unhandled,
}

/// A subscription's state as one event describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub customer: String,
    pub subscription: String,
    pub status: SubscriptionStatus,
    /// Stripe's own status, kept for the logs when it is not one of ours.
    pub stripe_status: String,
    pub current_period_end: Option<DateTime<Utc>>,
    /// Stripe has said the subscription ends at its period end: `cancel_at_period_end`, a
    /// `cancel_at` no later than the period end, or a trial that ends with no payment method
    /// to charge and is set to cancel or pause then. No renewal grace.
    pub ends_at_period_end: bool,
    /// When the unpaid renewal invoice was finalized (the charge is tried right after), when
    /// the object carries `latest_invoice` expanded and open: the earliest the payment can
    /// have failed. None otherwise; the event's `created` stands in for it.
    pub unpaid_invoice_since: Option<DateTime<Utc>>,
    /// An item's price or product is on the Pro list (`PRO_PRICE_IDS`), or there is no list.
    /// False grants nothing, whatever the status.
    pub price_grants_pro: bool,
}

/// Why a signed body was not turned into an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not a Stripe event at all: not JSON, or no id, type, created or object.
    #[error("not a Stripe event: {0}")]
    Malformed(String),
    /// A Stripe event carrying a value no column can hold: a control character (PostgreSQL
    /// refuses NUL in text) or more characters than the column has. Stripe's ids never look
    /// like this, and no retry can ever store it, so the webhook acknowledges it (and logs an
    /// error) rather than have Stripe retry it for days.
    #[error("{field} cannot be stored: {reason}")]
    Unstorable { field: &'static str, reason: String },
    /// A Stripe event that lacks what the tier rule needs: an `active` or `trialing`
    /// subscription with no period end, neither on the subscription nor on its items. Storing
    /// it would grant Pro with no end, so it is acknowledged, logged and not applied: the
    /// next event or `stripe-sync` sets the state.
    #[error("{0}")]
    Unusable(String),
}

fn malformed(reason: &str) -> EventError {
    EventError::Malformed(reason.to_owned())
}

/// The longest id the tables hold (`VARCHAR(255)` in m006, m007 and m010).
pub const MAX_ID_CHARS: usize = 255;
/// The longest event type `stripe_events.event_type` holds (`VARCHAR(100)`, m007).
pub const MAX_TYPE_CHARS: usize = 100;

/// `value` as a column will hold it, or why it never can. Lengths count characters, as
/// `VARCHAR(n)` does on PostgreSQL, MariaDB and SQLite.
pub fn storable(
    field: &'static str,
    value: String,
    max_chars: usize,
) -> Result<String, EventError> {
    let unstorable = |reason: String| EventError::Unstorable { field, reason };
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(unstorable(format!(
            "holds the control character U+{:04X}",
            u32::from(c)
        )));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(unstorable(format!(
            "{chars} characters, more than {max_chars}"
        )));
    }
    Ok(value)
}

/// An id Stripe sent that we store: present, and storable.
fn stored_id(value: &Value, key: &str, field: &'static str) -> Result<Option<String>, EventError> {
    text(value, key)
        .map(|id| storable(field, id, MAX_ID_CHARS))
        .transpose()
}

/// Stripe's subscription statuses → ours. None of the extra ones grants Pro.
///
/// | Stripe | ours | why |
/// |---|---|---|
/// | trialing, active, past_due, canceled, unpaid | same | |
/// | incomplete | incomplete | first payment not made yet (shown as itself: a payment waits) |
/// | incomplete_expired | canceled | first payment never made; Stripe ended it |
/// | paused | paused | trial ended without a payment method; no access until resumed |
/// | anything else | none | logged; the nearest status that grants nothing |
pub fn map_status(stripe: &str) -> (SubscriptionStatus, bool) {
    match stripe {
        "trialing" => (SubscriptionStatus::Trialing, true),
        "active" => (SubscriptionStatus::Active, true),
        "past_due" => (SubscriptionStatus::PastDue, true),
        "canceled" => (SubscriptionStatus::Canceled, true),
        "unpaid" => (SubscriptionStatus::Unpaid, true),
        "incomplete" => (SubscriptionStatus::Incomplete, true),
        "incomplete_expired" => (SubscriptionStatus::Canceled, true),
        "paused" => (SubscriptionStatus::Paused, true),
        _ => (SubscriptionStatus::None, false),
    }
}

/// Tie-break between events created in the same second: the later lifecycle stage wins.
/// `incomplete` comes before everything (it is the first status), `paused` ranks as `unpaid`
/// (both follow a period nobody paid for).
pub fn lifecycle_rank(status: SubscriptionStatus) -> u8 {
    match status {
        SubscriptionStatus::None | SubscriptionStatus::Incomplete => 0,
        SubscriptionStatus::Paused => 4,
        SubscriptionStatus::Trialing => 1,
        SubscriptionStatus::Active => 2,
        SubscriptionStatus::PastDue => 3,
        SubscriptionStatus::Unpaid => 4,
        SubscriptionStatus::Canceled => 5,
    }
}

fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        // Expanded objects carry their id.
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn timestamp(seconds: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(seconds, 0).single()
}

/// API 2025-03-31 and later put the period on each item: take the latest. Older versions
/// have it on the subscription.
fn period_end(subscription: &Value) -> Option<DateTime<Utc>> {
    let from_items = subscription
        .pointer("/items/data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("current_period_end").and_then(Value::as_i64))
        .max();
    from_items
        .or_else(|| {
            subscription
                .get("current_period_end")
                .and_then(Value::as_i64)
        })
        .and_then(timestamp)
}

/// Whether Stripe has said the subscription ends at its period end (see
/// [`Snapshot::ends_at_period_end`]). A trial's end with no payment method counts only when
/// `trial_settings.end_behavior.missing_payment_method` is `cancel` or `pause` (with
/// `create_invoice` Stripe bills and the subscription goes on, past due if unpaid) and the
/// subscription has neither `default_payment_method` nor `default_source`.
fn ends_at_period_end(subscription: &Value, end: Option<DateTime<Utc>>) -> bool {
    let flag = |key: &str| subscription.get(key).and_then(Value::as_bool) == Some(true);
    let cancel_at = subscription
        .get("cancel_at")
        .and_then(Value::as_i64)
        .and_then(timestamp);
    let cancels_by_the_end = match (cancel_at, end) {
        (Some(at), Some(end)) => at <= end,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let has_payment_method = ["default_payment_method", "default_source"]
        .iter()
        .any(|key| subscription.get(*key).is_some_and(|v| !v.is_null()));
    let trial_ends_unpaid = text(subscription, "status").as_deref() == Some("trialing")
        && matches!(
            subscription
                .pointer("/trial_settings/end_behavior/missing_payment_method")
                .and_then(Value::as_str),
            Some("cancel" | "pause")
        )
        && !has_payment_method;
    flag("cancel_at_period_end") || cancels_by_the_end || trial_ends_unpaid
}

/// `latest_invoice`, when expanded and still open, as the time it was finalized (Stripe
/// tries the charge right after): see [`Snapshot::unpaid_invoice_since`].
fn unpaid_invoice_since(subscription: &Value) -> Option<DateTime<Utc>> {
    let invoice = subscription.get("latest_invoice")?;
    if invoice.get("status").and_then(Value::as_str) != Some("open") {
        return None;
    }
    charged_at(invoice)
}

/// When Stripe first tried to charge `invoice`: its finalization
/// (`status_transitions.finalized_at`; Stripe attempts the payment right after, about an hour
/// after a renewal invoice is created), else its `created`.
fn charged_at(invoice: &Value) -> Option<DateTime<Utc>> {
    invoice
        .pointer("/status_transitions/finalized_at")
        .and_then(Value::as_i64)
        .or_else(|| invoice.get("created").and_then(Value::as_i64))
        .and_then(timestamp)
}

/// The first failed payment of a subscription's current run of unpaid invoices, read from
/// its invoices newest first (as `GET /v1/invoices?subscription=…` lists them): the start of
/// its past-due stretch when that stretch began an invoice or more before the latest one.
///
/// With dunning set to leave subscriptions past due, an invoice whose retries are exhausted
/// stays `open` and the next period's invoice fails too: the stretch began at the *oldest*
/// failed invoice of the run. The run ends, going back in time, at a `paid` invoice: Stripe
/// makes a subscription `active` when its latest invoice is paid, whatever older invoices
/// still say (support.stripe.com, "Retry schedules longer than a subscription's billing
/// period"), so an older open invoice belongs to an earlier stretch. A `void` invoice ends it
/// too (nothing was charged or failed). `draft` invoices and `open` ones not attempted yet
/// (`attempt_count` 0) have not failed and are passed over; `open` and `uncollectible` ones
/// with an attempt have failed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UnpaidRun {
    /// The earliest failed charge of the run so far.
    pub since: Option<DateTime<Utc>>,
    ended: bool,
}

impl UnpaidRun {
    /// Takes the next (older) invoice; false once the run has ended and no older invoice can
    /// matter.
    pub fn take(&mut self, invoice: &Value) -> bool {
        if self.ended {
            return false;
        }
        let attempted = invoice
            .get("attempt_count")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 0);
        match invoice.get("status").and_then(Value::as_str) {
            Some("paid" | "void") => self.ended = true,
            Some("open" | "uncollectible") if attempted => {
                if let Some(at) = charged_at(invoice) {
                    self.since = Some(self.since.map_or(at, |since| since.min(at)));
                }
            }
            _ => {}
        }
        !self.ended
    }
}

/// A Stripe subscription object (as in events' `data.object` and in `GET /v1/subscriptions`)
/// as the snapshot we keep. A status we do not know maps to `none` (see [`map_status`]).
/// An `active` or `trialing` one with no period end anywhere is [`EventError::Unusable`]:
/// fail closed rather than grant Pro with no end. `prices` says whether its items grant Pro.
pub fn snapshot_from_subscription(
    object: &Value,
    prices: &ProPrices,
) -> Result<Snapshot, EventError> {
    let customer = stored_id(object, "customer", "customer")?
        .ok_or_else(|| malformed("subscription without customer"))?;
    let subscription = stored_id(object, "id", "subscription")?
        .ok_or_else(|| malformed("subscription without id"))?;
    let stripe_status = text(object, "status").unwrap_or_default();
    let (status, _) = map_status(&stripe_status);
    let current_period_end = period_end(object);
    if current_period_end.is_none()
        && matches!(
            status,
            SubscriptionStatus::Active | SubscriptionStatus::Trialing
        )
    {
        return Err(EventError::Unusable(format!(
            "{status} subscription {subscription} has no current_period_end, neither on the \
             subscription nor on its items"
        )));
    }
    Ok(Snapshot {
        customer,
        subscription,
        status,
        stripe_status,
        ends_at_period_end: ends_at_period_end(object, current_period_end),
        unpaid_invoice_since: unpaid_invoice_since(object),
        price_grants_pro: prices.grants_pro(object),
        current_period_end,
    })
}

/// `created`: epoch seconds on snapshot events, an RFC 3339 time on thin (v2) events.
fn created_of(value: &Value) -> Option<i64> {
    match value.get("created")? {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp()),
        other => other.as_i64(),
    }
}

/// The event types [`parse`] acts on; any other is [`Action::Unhandled`].
pub const ACTED_ON: [&str; 7] = [
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.deleted",
];

/// `body` as an event; a subscription's items are checked against `prices` (the Pro list).
pub fn parse(body: &[u8], prices: &ProPrices) -> Result<Event, EventError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| EventError::Malformed(format!("invalid JSON: {e}")))?;
    let id = stored_id(&value, "id", "event id")?.ok_or_else(|| malformed("no id"))?;
    let kind = text(&value, "type").ok_or_else(|| malformed("no type"))?;
    let kind = storable("event type", kind, MAX_TYPE_CHARS)?;
    let created = created_of(&value).ok_or_else(|| malformed("no created"))?;
    let livemode = value.get("livemode").and_then(Value::as_bool);
    // A thin event (an event destination's, or any v2 event) carries no object: nothing to
    // apply, and nothing Stripe should retry. Acknowledged as ignored.
    let Some(object) = value.pointer("/data/object").filter(|o| o.is_object()) else {
        return Ok(Event {
            id,
            kind,
            created,
            livemode,
            action: Action::Unhandled,
        });
    };
    let action = match kind.as_str() {
        "checkout.session.completed" => Action::LinkCustomer {
            user_id: text(object, "client_reference_id").and_then(|id| id.parse().ok()),
            customer: stored_id(object, "customer", "customer")?,
            subscription: stored_id(object, "subscription", "subscription")?,
        },
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        // Pausing and resuming change the status; the event carries the whole subscription.
        | "customer.subscription.paused"
        | "customer.subscription.resumed" => {
            let snapshot = snapshot_from_subscription(object, prices)?;
            if !map_status(&snapshot.stripe_status).1 {
                tracing::warn!(event = %id, stripe_status = snapshot.stripe_status, "unknown Stripe subscription status; stored as none");
            }
            Action::Subscription(snapshot)
        }
        "customer.deleted" => Action::CustomerDeleted {
            customer: stored_id(object, "id", "customer")?
                .ok_or_else(|| malformed("customer without id"))?,
        },
        _ => Action::Unhandled,
    };
    Ok(Event {
        id,
        kind,
        created,
        livemode,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscription_event(object: Value) -> Vec<u8> {
        json!({"id": "evt_1", "type": "customer.subscription.updated", "created": 100,
               "data": {"object": object}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn period_end_from_items_or_the_old_field() {
        let basil = subscription_event(
            json!({"id": "sub_1", "customer": "cus_1", "status": "active",
            "items": {"data": [{"current_period_end": 200}, {"current_period_end": 300}]}}),
        );
        let old = subscription_event(
            json!({"id": "sub_1", "customer": "cus_1", "status": "active",
            "current_period_end": 250, "items": {"data": [{"id": "si_1"}]}}),
        );
        for (body, expected) in [(basil, 300), (old, 250)] {
            let Action::Subscription(s) = parse(&body, &ProPrices::default()).unwrap().action
            else {
                panic!("not a subscription")
            };
            assert_eq!(s.current_period_end, timestamp(expected));
        }
    }

    #[test]
    fn extra_stripe_statuses_never_grant_pro_and_show_as_themselves() {
        assert_eq!(map_status("incomplete").0, SubscriptionStatus::Incomplete);
        assert_eq!(map_status("paused").0, SubscriptionStatus::Paused);
        for stripe in [
            "incomplete",
            "incomplete_expired",
            "paused",
            "something_new",
        ] {
            let (status, _) = map_status(stripe);
            assert!(!matches!(
                status,
                SubscriptionStatus::Active
                    | SubscriptionStatus::Trialing
                    | SubscriptionStatus::PastDue
            ));
        }
    }

    #[test]
    fn malformed_events_are_refused() {
        for body in [
            &b"not json"[..],
            br#"{"type":"x"}"#,
            br#"{"id":"evt","type":"x"}"#,
        ] {
            assert!(parse(body, &ProPrices::default()).is_err());
        }
    }

    /// A thin event (v2 envelope: `related_object`, RFC 3339 `created`, no `data.object`) and
    /// an event of a type we do not act on are both acknowledged as unhandled.
    #[test]
    fn thin_and_unknown_events_are_unhandled() {
        let thin = json!({"id": "evt_thin", "object": "v2.core.event",
            "type": "v1.billing.meter.error_report_triggered", "livemode": true,
            "created": "2026-01-10T12:00:00.000Z",
            "related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/billing/meters/mtr_1"}});
        let unknown = json!({"id": "evt_u", "type": "invoice.paid", "created": 5,
            "data": {"object": {"id": "in_1", "object": "invoice"}}});
        let no_object = json!({"id": "evt_n", "type": "customer.subscription.updated",
            "created": 5, "data": {}});
        for (body, created) in [(thin, 1_768_046_400), (unknown, 5), (no_object, 5)] {
            let event = parse(body.to_string().as_bytes(), &ProPrices::default()).expect("parsed");
            assert_eq!(event.action, Action::Unhandled, "{body}");
            assert_eq!(event.created, created);
        }
    }

    #[test]
    fn an_active_subscription_without_a_period_end_is_unusable() {
        for status in ["active", "trialing"] {
            let body = subscription_event(json!({"id": "sub_1", "customer": "cus_1",
                "status": status, "items": {"data": [{"id": "si_1"}]}}));
            assert!(
                matches!(
                    parse(&body, &ProPrices::default()),
                    Err(EventError::Unusable(_))
                ),
                "{status}"
            );
        }
        // A status that grants nothing needs no period end.
        let canceled =
            subscription_event(json!({"id": "sub_1", "customer": "cus_1", "status": "canceled"}));
        assert!(parse(&canceled, &ProPrices::default()).is_ok());
    }

    #[test]
    fn reads_whether_stripe_said_it_ends_at_the_period_end() {
        let base = json!({"id": "sub_1", "customer": "cus_1", "status": "active",
            "current_period_end": 1_000, "cancel_at_period_end": false, "cancel_at": null});
        let with = |changes: Value| {
            let mut object = base.clone();
            for (key, value) in changes.as_object().unwrap() {
                object[key] = value.clone();
            }
            let Action::Subscription(s) = parse(&subscription_event(object), &ProPrices::default())
                .unwrap()
                .action
            else {
                panic!("not a subscription")
            };
            s.ends_at_period_end
        };
        assert!(!with(json!({})));
        assert!(with(json!({"cancel_at_period_end": true})));
        assert!(with(json!({"cancel_at": 1_000})));
        assert!(!with(json!({"cancel_at": 5_000})));
        let unpaid_trial = json!({"status": "trialing", "default_payment_method": null,
            "trial_settings": {"end_behavior": {"missing_payment_method": "pause"}}});
        assert!(with(unpaid_trial.clone()));
        let mut with_card = unpaid_trial.clone();
        with_card["default_payment_method"] = json!("pm_1");
        assert!(!with(with_card));
        let mut invoiced = unpaid_trial;
        invoiced["trial_settings"] =
            json!({"end_behavior": {"missing_payment_method": "create_invoice"}});
        assert!(!with(invoiced));
    }

    /// Newest first, as Stripe lists a subscription's invoices: the run of unpaid invoices
    /// goes back over failed `open`/`uncollectible` ones and passes over a draft and one not
    /// attempted yet; it ends at a `paid` one (an earlier stretch, however unpaid its
    /// invoices) or a `void` one.
    #[test]
    fn the_run_of_unpaid_invoices_starts_at_its_oldest_failed_charge() {
        let invoice = |status: &str, attempts: u64, finalized: Option<i64>| {
            json!({"id": "in", "object": "invoice", "status": status, "created": 1,
                "attempt_count": attempts, "status_transitions": {"finalized_at": finalized}})
        };
        let walk = |invoices: &[Value]| {
            let mut run = UnpaidRun::default();
            let taken = invoices.iter().take_while(|i| run.take(i)).count();
            (run.since, taken)
        };
        let left_past_due = [
            invoice("draft", 0, None),
            invoice("open", 0, Some(900)),
            invoice("open", 2, Some(800)),
            invoice("uncollectible", 4, Some(500)),
            invoice("open", 8, Some(300)),
            invoice("paid", 1, Some(100)),
            invoice("open", 8, Some(50)),
        ];
        assert_eq!(walk(&left_past_due), (timestamp(300), 5));
        let voided = [invoice("open", 1, Some(800)), invoice("void", 0, Some(500))];
        assert_eq!(walk(&voided), (timestamp(800), 1));
        // No finalization time: the invoice's creation stands in for it.
        assert_eq!(walk(&[invoice("open", 1, None)]), (timestamp(1), 1));
        assert_eq!(walk(&[invoice("paid", 1, Some(5))]), (None, 0));
    }

    #[test]
    fn an_expanded_open_invoice_dates_the_failure() {
        let body = subscription_event(json!({"id": "sub_1", "customer": "cus_1",
            "status": "past_due", "current_period_end": 9_000,
            "latest_invoice": {"id": "in_1", "object": "invoice", "status": "open",
                "created": 40, "status_transitions": {"finalized_at": 50}}}));
        let Action::Subscription(s) = parse(&body, &ProPrices::default()).unwrap().action else {
            panic!("not a subscription")
        };
        assert_eq!(s.unpaid_invoice_since, timestamp(50));
        let id_only = subscription_event(json!({"id": "sub_1", "customer": "cus_1",
            "status": "past_due", "current_period_end": 9_000, "latest_invoice": "in_1"}));
        let Action::Subscription(s) = parse(&id_only, &ProPrices::default()).unwrap().action else {
            panic!("not a subscription")
        };
        assert_eq!(s.unpaid_invoice_since, None);
    }
}
