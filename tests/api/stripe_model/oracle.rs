//! The oracle: the documented tier rule applied to the model's true state.
//!
//! Issue 18 states the rule; each part is one small function here, so the rule as the service
//! builds it can be aligned with in one place:
//! * `past_due` keeps Pro for GRACE_PERIOD_DAYS counted from when the subscription became past
//!   due (the first failed payment of this stretch), never from the period end;
//! * `active`/`trialing` keep Pro until the period end plus RENEWAL_GRACE_DAYS (Stripe's renewal
//!   event may be late), but only until the period end when `cancel_at_period_end` is set:
//!   Stripe has said it will end then;
//! * `canceled`, `unpaid`, `incomplete`, `incomplete_expired`, `paused`: Free;
//! * with `PRO_PRICE_IDS` set, a subscription whose price (or its product) is not listed
//!   grants nothing, whatever its status.

use std::collections::HashMap;

use super::model::{DAY, History, Object, Status, Sub};

pub const GRACE_PERIOD_DAYS: i64 = 7;
pub const RENEWAL_GRACE_DAYS: i64 = 3;

/// Whether `sub`, as Stripe holds it at `t`, grants Pro at `t`.
pub fn grants_pro(sub: &Sub, t: i64) -> bool {
    sub.listed
        && match sub.status {
            Status::Active | Status::Trialing => t < renewal_grace_end(sub),
            Status::PastDue => sub
                .past_due_since
                .is_some_and(|since| t < since + GRACE_PERIOD_DAYS * DAY),
            Status::Canceled
            | Status::Unpaid
            | Status::Incomplete
            | Status::IncompleteExpired
            | Status::Paused => false,
        }
}

/// [`grants_pro`] as a service may apply it to `sub` when it was first shown this stretch of
/// `past_due` at `seen` (issue 18: "the first event showing it"): an event about the stretch
/// that arrives late, or is lost, moves the start of the grace that late.
pub fn may_grant_pro(sub: &Sub, seen: Option<i64>, t: i64) -> bool {
    match (sub.status, sub.past_due_since, seen) {
        (Status::PastDue, Some(since), Some(seen)) => {
            sub.listed && t < since.max(seen) + GRACE_PERIOD_DAYS * DAY
        }
        _ => grants_pro(sub, t),
    }
}

/// The end of an active or trialing subscription's Pro, renewal grace included.
pub fn renewal_grace_end(sub: &Sub) -> i64 {
    if sub.cancel_at_period_end {
        sub.period_end
    } else {
        sub.period_end + RENEWAL_GRACE_DAYS * DAY
    }
}

/// The values our `status` column may hold for a Stripe status. Several where the service
/// may store Stripe's own status rather than the nearest of ours (issue 18 asks for
/// `incomplete` and `paused` to show as themselves); none of the extra ones grants Pro.
pub fn stored_statuses(status: Status) -> &'static [&'static str] {
    match status {
        Status::Trialing => &["trialing"],
        Status::Active => &["active"],
        Status::PastDue => &["past_due"],
        Status::Canceled => &["canceled"],
        Status::Unpaid => &["unpaid"],
        Status::Incomplete => &["none", "incomplete"],
        Status::IncompleteExpired => &["canceled", "incomplete_expired"],
        Status::Paused => &["unpaid", "paused"],
    }
}

/// Every object as Stripe holds it at `t`.
pub struct Truth<'a> {
    pub subs: HashMap<&'a str, &'a Sub>,
    pub deleted_customers: Vec<&'a str>,
}

impl History {
    pub fn truth_at(&self, t: i64) -> Truth<'_> {
        let mut subs = HashMap::new();
        let mut deleted_customers = Vec::new();
        for (_, object) in self.versions.iter().take_while(|(at, _)| *at <= t) {
            match object {
                Object::Sub(sub) => {
                    subs.insert(sub.id.as_str(), sub);
                }
                Object::Customer(c) if c.deleted => deleted_customers.push(c.id.as_str()),
                _ => {}
            }
        }
        Truth {
            subs,
            deleted_customers,
        }
    }

    /// The oracle's tier for `user` at `t`: Pro when any subscription of a customer the user
    /// checked out with (once that Checkout completed) grants Pro.
    pub fn pro_at(&self, user: usize, t: i64) -> bool {
        self.truth_at(t)
            .subs
            .values()
            .filter(|s| self.owner.get(&s.customer) == Some(&user))
            .filter(|s| {
                self.owned_since
                    .get(&s.customer)
                    .is_some_and(|since| *since <= t)
            })
            .any(|s| grants_pro(s, t))
    }

    /// Whether a service that knows each of `user`'s subscriptions as Stripe held it at some
    /// instant of `[from, to]` (each its own instant) may hold Pro at `to` under the rule
    /// (`any`), and whether it must (`all`): the first is the bound of "no Pro beyond the
    /// grace without paying", the second of "a payer keeps Pro". For `must` a customer counts
    /// only once the Checkout that made it completed by `from` (before that nobody can know
    /// whose it is); for `may` from its creation (it is the user's, and paid).
    pub fn may_and_must_be_pro(
        &self,
        user: usize,
        from: i64,
        to: i64,
        past_due_seen: &dyn Fn(&Sub) -> Option<i64>,
    ) -> (bool, bool) {
        let instants = self.instants(from, to);
        let truths: Vec<(i64, Truth<'_>)> =
            instants.iter().map(|i| (*i, self.truth_at(*i))).collect();
        let mine = |c: &str| self.owner.get(c) == Some(&user);
        let known_mine =
            |c: &str| mine(c) && self.owned_since.get(c).is_some_and(|since| *since <= from);
        let may = truths.iter().any(|(_, truth)| {
            truth
                .subs
                .values()
                .any(|s| mine(&s.customer) && may_grant_pro(s, past_due_seen(s), to))
        });
        let ids: Vec<&str> = truths
            .last()
            .map(|(_, t)| t.subs.keys().copied().collect())
            .unwrap_or_default();
        let must = truths.iter().all(|(i, _)| self.pro_at(user, *i))
            && ids.iter().any(|id| {
                truths.iter().all(|(_, truth)| {
                    truth
                        .subs
                        .get(id)
                        .is_some_and(|s| known_mine(&s.customer) && grants_pro(s, to))
                })
            });
        (may, must)
    }

    /// The instants at which `user`'s oracle tier can change within `[from, to]`, with the
    /// instant just before each: enough to tell whether it was Pro (or Free) all along.
    pub fn instants(&self, from: i64, to: i64) -> Vec<i64> {
        let mut out = vec![from, to];
        for (at, object) in &self.versions {
            if *at > from && *at <= to {
                out.push(*at);
                out.push(at - 1);
            }
            if let Object::Sub(sub) = object {
                for end in [
                    sub.past_due_since.map(|s| s + GRACE_PERIOD_DAYS * DAY),
                    Some(renewal_grace_end(sub)),
                ]
                .into_iter()
                .flatten()
                {
                    if end > from && end <= to {
                        out.push(end);
                        out.push(end - 1);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}
