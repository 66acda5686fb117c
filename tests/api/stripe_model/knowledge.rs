//! What the service can have been told at an instant, and the two instant properties judged
//! on it: pure, so that the reference service of `model_checks` is judged by the same code as
//! the real one.

use std::collections::{HashMap, HashSet};

use super::day;
use super::model::{History, Object, Sub};

/// How far before the `Date` of its response a fetched snapshot may be ordered (the service
/// subtracts a margin from Stripe's clock, issue 18): events created within it may still win
/// over the snapshot, so the service may know Stripe's state only as of `Date` minus this.
pub const SYNC_MARGIN: i64 = 15 * 60;

/// What the service has been told about one user at an instant, for the properties.
pub struct Knowledge<'a> {
    h: &'a History,
    pub delivered: HashSet<usize>,
    /// For each stretch of `past_due` (subscription, when it began): when the service was
    /// first shown it, by a delivered event's `created` or a sync's clock.
    pub past_due_seen: HashMap<(String, i64), i64>,
    /// Stripe's clock at the last sync.
    pub last_sync: Option<i64>,
}

impl<'a> Knowledge<'a> {
    pub fn new(h: &'a History) -> Self {
        Self {
            h,
            delivered: HashSet::new(),
            past_due_seen: HashMap::new(),
            last_sync: None,
        }
    }

    /// NO UNPAID PRO and PAYER KEEPS PRO for `user` at `t`, given whether the service holds
    /// Pro then.
    pub fn judge(&self, user: usize, t: i64, stored_pro: bool) -> Result<(), String> {
        let h = self.h;
        let horizon = self.horizon(user, t);
        let seen = |sub: &Sub| {
            let since = sub.past_due_since?;
            self.past_due_seen.get(&(sub.id.clone(), since)).copied()
        };
        let (may, must) = h.may_and_must_be_pro(user, horizon, t, &seen);
        if stored_pro && !may {
            return Err(format!(
                "NO UNPAID PRO: user {user} is Pro at {} though the rule gives Free on every \
                 state Stripe held since {} (what the service can know by then)",
                day(h, t),
                day(h, horizon),
            ));
        }
        if !stored_pro && must {
            return Err(format!(
                "PAYER KEEPS PRO: user {user} is Free at {} though the rule gives Pro on every \
                 state Stripe held since {} (outside every named window)",
                day(h, t),
                day(h, horizon),
            ));
        }
        Ok(())
    }

    /// Notes a past-due stretch shown at `at`.
    pub fn saw(&mut self, object: &Object, at: i64) {
        if let Object::Sub(sub) = object
            && let Some(since) = sub.past_due_since
        {
            let first = self
                .past_due_seen
                .entry((sub.id.clone(), since))
                .or_insert(at);
            *first = (*first).min(at);
        }
    }

    /// The instant up to which the service can know `user`'s truth at `t`: the last sync's
    /// clock less the margin, or the creation of the earliest event about the user created
    /// since then and not delivered yet (in flight, or lost), whichever is earlier.
    pub fn horizon(&self, user: usize, t: i64) -> i64 {
        let covered = self.last_sync.map_or(i64::MIN, |s| s - SYNC_MARGIN);
        let pending = self
            .h
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.created <= t && e.created > covered)
            .filter(|(_, e)| self.h.owner.get(&e.customer) == Some(&user))
            .filter(|(i, _)| !self.delivered.contains(i))
            .map(|(_, e)| e.created - 1)
            .min();
        pending.unwrap_or(t).min(t)
    }
}
