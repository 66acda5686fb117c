//! The Stripe events we act on, parsed from the webhook body.

use chrono::{DateTime, TimeZone, Utc};
use entity::SubscriptionStatus;
use serde_json::Value;

/// The envelope every Stripe event shares.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: String,
    /// Whole seconds since the epoch.
    pub created: i64,
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
    /// Any other type: acknowledged and logged.
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
/// | incomplete | none | first payment not made yet |
/// | incomplete_expired | canceled | first payment never made; Stripe ended it |
/// | paused | unpaid | trial ended without a payment method; no access until paid |
/// | anything else | none | logged; the nearest status that grants nothing |
pub fn map_status(stripe: &str) -> (SubscriptionStatus, bool) {
    match stripe {
        "trialing" => (SubscriptionStatus::Trialing, true),
        "active" => (SubscriptionStatus::Active, true),
        "past_due" => (SubscriptionStatus::PastDue, true),
        "canceled" => (SubscriptionStatus::Canceled, true),
        "unpaid" => (SubscriptionStatus::Unpaid, true),
        "incomplete" => (SubscriptionStatus::None, true),
        "incomplete_expired" => (SubscriptionStatus::Canceled, true),
        "paused" => (SubscriptionStatus::Unpaid, true),
        _ => (SubscriptionStatus::None, false),
    }
}

/// Tie-break between events created in the same second: the later lifecycle stage wins.
pub fn lifecycle_rank(status: SubscriptionStatus) -> u8 {
    match status {
        SubscriptionStatus::None => 0,
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

/// A Stripe subscription object (as in events' `data.object` and in `GET /v1/subscriptions`)
/// as the snapshot we keep. A status we do not know maps to `none` (see [`map_status`]).
pub fn snapshot_from_subscription(object: &Value) -> Result<Snapshot, EventError> {
    let customer = stored_id(object, "customer", "customer")?
        .ok_or_else(|| malformed("subscription without customer"))?;
    let subscription = stored_id(object, "id", "subscription")?
        .ok_or_else(|| malformed("subscription without id"))?;
    let stripe_status = text(object, "status").unwrap_or_default();
    let (status, _) = map_status(&stripe_status);
    Ok(Snapshot {
        customer,
        subscription,
        status,
        stripe_status,
        current_period_end: period_end(object),
    })
}

pub fn parse(body: &[u8]) -> Result<Event, EventError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| EventError::Malformed(format!("invalid JSON: {e}")))?;
    let id = stored_id(&value, "id", "event id")?.ok_or_else(|| malformed("no id"))?;
    let kind = text(&value, "type").ok_or_else(|| malformed("no type"))?;
    let kind = storable("event type", kind, MAX_TYPE_CHARS)?;
    let created = value
        .get("created")
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed("no created"))?;
    let object = value
        .pointer("/data/object")
        .ok_or_else(|| malformed("no data.object"))?;
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
            let snapshot = snapshot_from_subscription(object)?;
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
            let Action::Subscription(s) = parse(&body).unwrap().action else {
                panic!("not a subscription")
            };
            assert_eq!(s.current_period_end, timestamp(expected));
        }
    }

    #[test]
    fn extra_stripe_statuses_never_grant_pro() {
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
            br#"{"id":"evt","type":"x","created":1}"#,
        ] {
            assert!(parse(body).is_err());
        }
    }
}
