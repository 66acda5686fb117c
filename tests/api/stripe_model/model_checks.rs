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

/// A service that does what issue 18 asks, in memory: snapshots ordered by Stripe's clock
/// (events by `created`, syncs by `Date` less the margin), the past-due grace counted from
/// the first event or sync showing it, no renewal grace with `cancel_at_period_end`, and
/// customers linked by their Checkout's `client_reference_id` (webhook or sync), and, with
/// `PRO_PRICE_IDS` set, Pro only for a subscription whose price or product is listed.
#[derive(Default)]
struct Reference {
    links: HashMap<String, usize>,
    subs: HashMap<String, Stored>,
    /// The history runs with [`model::PRO_LIST`].
    pro_list: bool,
}

struct Stored {
    customer: String,
    status: Status,
    period_end: i64,
    cancel_at_period_end: bool,
    key: i64,
    past_due_from: Option<i64>,
    /// Its price or product is on the list, or there is none.
    listed: bool,
}

impl Reference {
    fn apply(&mut self, sub: &Sub, key: i64, shown_at: i64) {
        let before = self.subs.get_mut(&sub.id);
        if let Some(b) = before.filter(|b| b.key > key) {
            // Stale: the stored state is newer. An older event showing the same past-due
            // stretch still tells when it began (issue 18: "the first event showing it").
            if sub.status == Status::PastDue && b.status == Status::PastDue {
                b.past_due_from = b.past_due_from.map(|f| f.min(shown_at));
            }
            return;
        }
        let before = self.subs.get(&sub.id);
        let past_due_from = match before {
            _ if sub.status != Status::PastDue => None,
            Some(b) if b.status == Status::PastDue => b.past_due_from.map(|f| f.min(shown_at)),
            _ => Some(shown_at),
        };
        self.subs.insert(
            sub.id.clone(),
            Stored {
                customer: sub.customer.clone(),
                status: sub.status,
                period_end: sub.period_end,
                cancel_at_period_end: sub.cancel_at_period_end,
                key,
                past_due_from,
                listed: !self.pro_list
                    || model::PRO_LIST
                        .split(',')
                        .any(|e| e == sub.price || e == model::product_of(sub.price)),
            },
        );
    }

    fn pro(&self, user: usize, t: i64) -> bool {
        use super::oracle::{GRACE_PERIOD_DAYS, RENEWAL_GRACE_DAYS};
        self.subs
            .values()
            .filter(|s| self.links.get(&s.customer) == Some(&user))
            .filter(|s| s.listed)
            .any(|s| match s.status {
                Status::Active | Status::Trialing => {
                    let grace = if s.cancel_at_period_end {
                        0
                    } else {
                        RENEWAL_GRACE_DAYS
                    };
                    t < s.period_end + grace * DAY
                }
                Status::PastDue => s
                    .past_due_from
                    .is_some_and(|f| t < f + GRACE_PERIOD_DAYS * DAY),
                _ => false,
            })
    }

    fn sync(&mut self, h: &model::History, at: i64) {
        for (_, object) in h.versions.iter().take_while(|(v, _)| *v <= at) {
            if let Object::Checkout(c) = object {
                self.links.insert(c.customer.clone(), c.user);
            }
        }
        let truth = h.truth_at(at);
        for sub in truth.subs.values() {
            // A past-due stretch first seen by a sync starts at the latest invoice's first
            // failed attempt, as Stripe shows it.
            let failed_at = sub
                .latest_invoice
                .as_ref()
                .filter(|i| i.status == "open" && i.attempt_count > 0)
                .map_or(at, |i| i.finalized_at());
            self.apply(sub, at - super::knowledge::SYNC_MARGIN, failed_at);
        }
    }
}

/// The properties hold for a service that does what issue 18 asks: the oracle and its named
/// windows demand nothing a correct service cannot do. (A property that failed here would be
/// the oracle's fault, not the service's.)
#[test]
fn a_service_built_to_the_rule_keeps_the_properties() {
    const SEEDS: u64 = 300;
    use super::deliver::{self, Step};
    use super::knowledge::Knowledge;
    let start = 1_780_000_000;
    let end = start + 150 * DAY;
    let mut failures = Vec::new();
    for seed in 0..SEEDS {
        let h = model::generate(seed, start, end);
        let mut rng = super::rng::Rng::new(seed ^ 0x5EED_DE11_7E57);
        let steps = deliver::plan(&h, &mut rng);
        let mut known = Knowledge::new(&h);
        let mut service = Reference {
            pro_list: h.pro_list,
            ..Reference::default()
        };
        let mut failed = None;
        for (at, step) in &steps {
            match step {
                Step::Deliver { event, .. } => {
                    let sent = &h.events[*event];
                    match &sent.object {
                        Object::Checkout(c) => {
                            service.links.insert(c.customer.clone(), c.user);
                        }
                        Object::Sub(sub) if sent.kind != Kind::CustomerCreated => {
                            service.apply(sub, sent.created, sent.created);
                        }
                        _ => {}
                    }
                    known.delivered.insert(*event);
                    known.saw(&sent.object, sent.created);
                }
                Step::Sync { .. } => {
                    let at = (*at).min(end);
                    service.sync(&h, at);
                    known.last_sync = Some(at);
                    for sub in h.truth_at(at).subs.values() {
                        known.saw(&Object::Sub((*sub).clone()), at);
                    }
                }
            }
            if *at <= end && failed.is_none() {
                for u in 0..h.users.len() {
                    if let Err(why) = known.judge(u, *at, service.pro(u, *at)) {
                        failed = Some(why);
                        break;
                    }
                }
            }
        }
        service.sync(&h, end);
        for u in 0..h.users.len() {
            if failed.is_none() && service.pro(u, end) != h.pro_at(u, end) {
                let truth = h.truth_at(end);
                let told: Vec<String> = truth
                    .subs
                    .values()
                    .filter(|s| h.owner.get(&s.customer) == Some(&u))
                    .map(|s| {
                        let stored = service.subs.get(&s.id).map(|b| {
                            (
                                b.status,
                                b.period_end - end,
                                b.past_due_from.map(|f| f - end),
                            )
                        });
                        format!(
                            "{} {:?} ends {} since {:?}: stored {stored:?}",
                            s.id,
                            s.status,
                            s.period_end - end,
                            s.past_due_since.map(|p| p - end)
                        )
                    })
                    .collect();
                failed = Some(format!("SETTLED TIER: user {u}: {told:?}"));
            }
        }
        if let Some(why) = failed {
            failures.push(format!("seed {seed}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {SEEDS} histories:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
