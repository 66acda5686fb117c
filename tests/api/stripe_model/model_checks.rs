//! The model checked against the Stripe rules it claims, over many seeds, without a database:
//! a model that broke them would make the oracle wrong, and every property with it.

use std::collections::HashMap;

use super::model::{
    self, DAY, HOUR, INCOMPLETE_EXPIRY, Kind, Object, PAYMENT_DELAY, Shape, Status, Sub,
};

fn legal(from: Status, to: Status) -> bool {
    use Status::*;
    from == to
        || matches!(
            (from, to),
            (Incomplete, Active | IncompleteExpired | Canceled)
                | (Trialing, Active | Paused | Canceled)
                | (Active, PastDue | Canceled)
                | (PastDue, Active | Unpaid | Canceled)
                | (Unpaid, Active | Canceled)
                | (Paused, Active | Canceled)
        )
}

#[test]
fn the_model_keeps_stripes_rules() {
    let start = 1_780_000_000;
    let mut shapes = [0; 2];
    let mut seen_statuses = std::collections::HashSet::new();
    for seed in 0..2_000u64 {
        let h = model::generate(seed, start, start + 150 * DAY);
        shapes[usize::from(h.shape == Shape::Basil)] += 1;
        assert!(h.events.windows(2).all(|w| w[0].created <= w[1].created));
        let mut last: HashMap<&str, (i64, &Sub)> = HashMap::new();
        for (at, object) in &h.versions {
            let Object::Sub(sub) = object else { continue };
            seen_statuses.insert(sub.status.as_str());
            if let Some((_, before)) = last.get(sub.id.as_str()) {
                assert!(
                    legal(before.status, sub.status),
                    "seed {seed}: {} {:?} -> {:?} at {at}",
                    sub.id,
                    before.status,
                    sub.status
                );
                assert!(
                    !before.status.is_final() || before == &sub,
                    "seed {seed}: ended {} changed",
                    sub.id
                );
                // [status]: incomplete lasts 23 hours at most.
                if before.status == Status::Incomplete && sub.status == Status::IncompleteExpired {
                    assert_eq!(*at, sub.created + INCOMPLETE_EXPIRY, "seed {seed}");
                }
                // [period]: a renewal moves the period first, with the invoice still unpaid.
                if sub.period_end > before.period_end && before.status != Status::Paused {
                    let invoice = sub.latest_invoice.as_ref().expect("renewal invoice");
                    assert_eq!(invoice.created, *at, "seed {seed}");
                    assert!(
                        matches!(invoice.status, "open" | "void" | "draft"),
                        "seed {seed}: {} renewed with its invoice {}",
                        sub.id,
                        invoice.status
                    );
                    assert_eq!(sub.period_start, *at);
                    // [cancel]: cancel_at_period_end ends it at the period's end instead.
                    assert!(
                        !before.cancel_at_period_end,
                        "seed {seed}: {} renewed",
                        sub.id
                    );
                }
                // past_due begins with a failed payment, an hour or more after the invoice.
                if before.status != Status::PastDue && sub.status == Status::PastDue {
                    let invoice = sub.latest_invoice.as_ref().expect("failed invoice");
                    assert!(*at >= invoice.created + PAYMENT_DELAY, "seed {seed}");
                    assert_eq!(sub.past_due_since, Some(*at));
                    assert!(h.events.iter().any(|e| e.kind == Kind::InvoiceFailed
                        && e.created == *at
                        && matches!(&e.object, Object::Invoice(i, s) if s == &sub.id && i.id == invoice.id)));
                }
                // Dunning ends within the retry schedule: two weeks and an hour at most.
                if let Some(since) = sub.past_due_since
                    && h.after_retries != model::AfterRetries::LeavePastDue
                {
                    assert!(
                        *at <= since + 14 * DAY + HOUR,
                        "seed {seed}: still past due at {at}"
                    );
                }
            }
            last.insert(&sub.id, (*at, sub));
        }
        // Every change of status is told by a subscription event created at that instant.
        for (at, object) in &h.versions {
            let Object::Sub(sub) = object else { continue };
            let told = h.events.iter().any(|e| {
                e.created == *at
                    && matches!(&e.object, Object::Sub(s) if s.id == sub.id && s.status == sub.status)
            });
            let first = h
                .versions
                .iter()
                .find(|(_, o)| matches!(o, Object::Sub(s) if s.id == sub.id));
            let changed = h
                .versions
                .iter()
                .take_while(|(t, _)| t < at)
                .filter_map(|(_, o)| match o {
                    Object::Sub(s) if s.id == sub.id => Some(s.status),
                    _ => None,
                })
                .last()
                .is_none_or(|s| s != sub.status);
            if changed || first.is_some_and(|(t, _)| t == at) {
                assert!(
                    told,
                    "seed {seed}: {} became {:?} at {at} untold",
                    sub.id, sub.status
                );
            }
        }
    }
    assert!(
        shapes[0] > 500 && shapes[1] > 500,
        "both API shapes: {shapes:?}"
    );
    for status in [
        "incomplete",
        "incomplete_expired",
        "trialing",
        "active",
        "past_due",
        "unpaid",
        "canceled",
        "paused",
    ] {
        assert!(
            seen_statuses.contains(status),
            "no history reached {status}"
        );
    }
}
