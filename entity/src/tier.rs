//! The tier rule. Its SQL twin is the `user_tiers` view (m012); a test proves they agree for
//! every status, period-end and past-due position and both price flags, over several
//! subscriptions, on every backend.
//!
//! A subscription whose items match none of the Pro prices (`PRO_PRICE_IDS`, when set; the
//! webhook and `stripe-sync` store the answer as `price_grants_pro`) grants nothing. Any other
//! grants Pro by this table:
//!
//! | status                  | condition                                                        | tier |
//! |-------------------------|------------------------------------------------------------------|------|
//! | active, trialing        | no period end                                                    | Pro  |
//! | active, trialing        | renews: less than 3 days past `current_period_end`               | Pro  |
//! | active, trialing        | ends at period end: before `current_period_end`                  | Pro  |
//! | past_due                | less than 7 days past `past_due_since`                           | Pro  |
//! | past_due                | no `past_due_since`, or 7+ days past it                          | Free |
//! | anything else           | any                                                              | Free |
//!
//! `past_due`'s grace is counted from when the payment failed, never from the period end:
//! Stripe moves the period to the new one when it invoices a renewal, before it charges, so a
//! past-due subscription's period end is the end of a period nobody has paid for.
//! "Ends at period end" is Stripe saying no renewal is coming (`cancel_at_period_end`, or a
//! trial ending with no payment method): no renewal grace then.
//!
//! A user is Pro when any of their subscriptions grants Pro (their own billing columns count
//! as one more: they are a copy of one subscription, or were set by hand). The columns show
//! the subscription that decides, by [`decider`].

use std::cmp::Ordering;

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::SubscriptionStatus;

/// Days `past_due` keeps Pro after `past_due_since`. m011 fixes the same number in the view
/// (`PAST_DUE_GRACE_DAYS` there; a test checks they are equal): a different value needs a
/// migration that replaces the view.
pub const GRACE_PERIOD_DAYS: i64 = 7;

/// Days a renewing `active`/`trialing` subscription keeps Pro after the period end, waiting
/// for Stripe's renewal event (it can come hours late, or days late while our endpoint is
/// down). m010 fixes the same number in the view (`RENEWAL_GRACE_DAYS` there; a test checks
/// they are equal).
pub const RENEWAL_GRACE_DAYS: i64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    Free,
    Pro,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
        }
    }
}

/// One subscription as the tier rule reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub subscription_id: Option<String>,
    pub status: SubscriptionStatus,
    pub current_period_end: Option<DateTime<Utc>>,
    /// When it became `past_due`; None in any other status.
    pub past_due_since: Option<DateTime<Utc>>,
    /// Stripe has said it ends at the period end: no renewal grace.
    pub ends_at_period_end: bool,
    /// Its items matched the Pro prices when it was stored (always, with no list): false
    /// grants nothing, whatever the status.
    pub price_grants_pro: bool,
}

impl Standing {
    /// A stored status outside the known ones grants nothing.
    pub fn from_stored<Tz: TimeZone>(
        subscription_id: Option<String>,
        status: &str,
        current_period_end: Option<&DateTime<Tz>>,
        past_due_since: Option<&DateTime<Tz>>,
        ends_at_period_end: bool,
        price_grants_pro: bool,
    ) -> Self {
        Self {
            subscription_id,
            status: status.parse().unwrap_or(SubscriptionStatus::None),
            current_period_end: current_period_end.map(|end| end.with_timezone(&Utc)),
            past_due_since: past_due_since.map(|since| since.with_timezone(&Utc)),
            ends_at_period_end,
            price_grants_pro,
        }
    }

    /// The rule for one subscription (the table in the module comment).
    pub fn tier_at(&self, now: DateTime<Utc>) -> Tier {
        let pro = self.price_grants_pro
            && match self.status {
                SubscriptionStatus::Active | SubscriptionStatus::Trialing => {
                    let grace = if self.ends_at_period_end {
                        Duration::zero()
                    } else {
                        Duration::days(RENEWAL_GRACE_DAYS)
                    };
                    self.current_period_end.is_none_or(|end| end + grace > now)
                }
                SubscriptionStatus::PastDue => self
                    .past_due_since
                    .is_some_and(|since| since + Duration::days(GRACE_PERIOD_DAYS) > now),
                SubscriptionStatus::None
                | SubscriptionStatus::Canceled
                | SubscriptionStatus::Unpaid
                | SubscriptionStatus::Incomplete
                | SubscriptionStatus::Paused => false,
            };
        if pro { Tier::Pro } else { Tier::Free }
    }
}

/// `active` > `trialing` > `past_due` > `incomplete` > `paused` > `unpaid` > `canceled` >
/// `none`: among subscriptions that grant nothing, the one a client can act on shows first (a
/// payment waiting, a payment method to add).
fn status_order(status: SubscriptionStatus) -> u8 {
    match status {
        SubscriptionStatus::Active => 7,
        SubscriptionStatus::Trialing => 6,
        SubscriptionStatus::PastDue => 5,
        SubscriptionStatus::Incomplete => 4,
        SubscriptionStatus::Paused => 3,
        SubscriptionStatus::Unpaid => 2,
        SubscriptionStatus::Canceled => 1,
        SubscriptionStatus::None => 0,
    }
}

/// Orders two subscriptions by the rule that picks the one deciding the tier: one that grants
/// Pro at `now` beats one that does not; then by status; then the period that ends last (no
/// end counts as last); then the subscription id, so equal keys are deterministic.
pub fn compare(a: &Standing, b: &Standing, now: DateTime<Utc>) -> Ordering {
    let ends = |s: &Standing| match s.current_period_end {
        None => (1, None),
        Some(end) => (0, Some(end)),
    };
    (a.tier_at(now) == Tier::Pro)
        .cmp(&(b.tier_at(now) == Tier::Pro))
        .then(status_order(a.status).cmp(&status_order(b.status)))
        .then(ends(a).cmp(&ends(b)))
        .then(a.subscription_id.cmp(&b.subscription_id))
}

/// The subscription that decides the tier at `now`; the same whatever the order given.
pub fn decider(standings: &[Standing], now: DateTime<Utc>) -> Option<&Standing> {
    standings.iter().max_by(|a, b| compare(a, b, now))
}

/// Pro when any of `standings` grants Pro at `now`.
pub fn tier_over(standings: &[Standing], now: DateTime<Utc>) -> Tier {
    if standings.iter().any(|s| s.tier_at(now) == Tier::Pro) {
        Tier::Pro
    } else {
        Tier::Free
    }
}

/// The tier whose retention window the purge applies: Pro when the user held Pro at any
/// moment of the last RENEWAL_GRACE_DAYS. A grant only ever ends as time passes, so that is
/// the tier as it stood RENEWAL_GRACE_DAYS ago.
pub fn retention_tier_over(standings: &[Standing], now: DateTime<Utc>) -> Tier {
    tier_over(standings, now - Duration::days(RENEWAL_GRACE_DAYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0)
            .single()
            .unwrap()
            + Duration::days(days)
    }

    /// A subscription; a `past_due` one became past due on its `end` day.
    fn standing(id: &str, status: SubscriptionStatus, end: Option<i64>) -> Standing {
        Standing {
            subscription_id: Some(id.to_owned()),
            status,
            current_period_end: end.map(at),
            past_due_since: end
                .filter(|_| status == SubscriptionStatus::PastDue)
                .map(at),
            ends_at_period_end: false,
            price_grants_pro: true,
        }
    }

    #[test]
    fn follows_the_table() {
        let now = at(0);
        use SubscriptionStatus as S;
        // (status, period end, past due since, ends at period end, tier)
        let cases = [
            (S::Active, None, None, false, Tier::Pro),
            (S::Active, Some(1), None, false, Tier::Pro),
            (S::Active, Some(0), None, false, Tier::Pro),
            (S::Active, Some(-2), None, false, Tier::Pro),
            (S::Active, Some(-3), None, false, Tier::Free),
            (S::Trialing, Some(-1), None, false, Tier::Pro),
            (S::Trialing, Some(-4), None, false, Tier::Free),
            // Stripe said it ends at the period end: Pro until then, no renewal grace.
            (S::Active, Some(1), None, true, Tier::Pro),
            (S::Active, Some(0), None, true, Tier::Free),
            (S::Trialing, Some(-1), None, true, Tier::Free),
            (S::Active, None, None, true, Tier::Pro),
            // past_due counts from when it became past due, never from the period end.
            (S::PastDue, None, None, false, Tier::Free),
            (S::PastDue, Some(-6), None, false, Tier::Free),
            (S::PastDue, Some(25), Some(-6), false, Tier::Pro),
            (S::PastDue, Some(25), Some(-7), false, Tier::Free),
            (S::PastDue, Some(10), Some(-20), false, Tier::Free),
            (S::PastDue, Some(65), Some(-300), false, Tier::Free),
            (S::PastDue, Some(-30), Some(-1), true, Tier::Pro),
            (S::Canceled, Some(30), None, false, Tier::Free),
            (S::Unpaid, None, None, false, Tier::Free),
            (S::None, Some(1), None, false, Tier::Free),
            (S::Incomplete, Some(30), None, false, Tier::Free),
            (S::Paused, None, None, false, Tier::Free),
        ];
        for (status, end, since, ends_at_period_end, expected) in cases {
            let mut standing = Standing {
                subscription_id: None,
                status,
                current_period_end: end.map(at),
                past_due_since: since.map(at),
                ends_at_period_end,
                price_grants_pro: true,
            };
            assert_eq!(standing.tier_at(now), expected, "{standing:?}");
            // A price off the Pro list grants nothing, whatever the rest says.
            standing.price_grants_pro = false;
            assert_eq!(standing.tier_at(now), Tier::Free, "{standing:?}");
        }
    }

    #[test]
    fn a_subscription_off_the_pro_list_never_decides_over_one_on_it() {
        use SubscriptionStatus as S;
        let now = at(0);
        let mut basic = standing("sub_basic", S::Active, Some(20));
        basic.price_grants_pro = false;
        let pro = standing("sub_pro", S::Trialing, Some(5));
        let both = [basic.clone(), pro.clone()];
        assert_eq!(tier_over(&both, now), Tier::Pro);
        assert_eq!(
            decider(&both, now).and_then(|s| s.subscription_id.clone()),
            Some("sub_pro".to_owned())
        );
        assert_eq!(tier_over(&[basic], now), Tier::Free);
    }

    #[test]
    fn the_decider_follows_the_rule_in_any_order() {
        use SubscriptionStatus as S;
        let now = at(0);
        let cases: Vec<(Vec<Standing>, &str)> = vec![
            // Granting Pro beats status: an active one 10 days past its end grants nothing.
            (
                vec![
                    standing("sub_a", S::Active, Some(-10)),
                    standing("sub_p", S::PastDue, Some(-1)),
                ],
                "sub_p",
            ),
            // Then status.
            (
                vec![
                    standing("sub_t", S::Trialing, Some(20)),
                    standing("sub_a", S::Active, Some(5)),
                ],
                "sub_a",
            ),
            (
                vec![
                    standing("sub_c", S::Canceled, Some(20)),
                    standing("sub_u", S::Unpaid, Some(5)),
                    standing("sub_n", S::None, None),
                ],
                "sub_u",
            ),
            // Then the later period end (none counts as last).
            (
                vec![
                    standing("sub_1", S::Active, Some(5)),
                    standing("sub_2", S::Active, Some(9)),
                ],
                "sub_2",
            ),
            (
                vec![
                    standing("sub_1", S::Active, None),
                    standing("sub_2", S::Active, Some(9)),
                ],
                "sub_1",
            ),
            // Then the id.
            (
                vec![
                    standing("sub_1", S::Canceled, Some(1)),
                    standing("sub_2", S::Canceled, Some(1)),
                ],
                "sub_2",
            ),
        ];
        for (mut standings, expected) in cases {
            for _ in 0..standings.len() {
                standings.rotate_left(1);
                let mut reversed = standings.clone();
                reversed.reverse();
                for order in [&standings, &reversed] {
                    let winner = decider(order, now).and_then(|s| s.subscription_id.clone());
                    assert_eq!(winner.as_deref(), Some(expected), "{order:?}");
                }
            }
        }
    }

    #[test]
    fn the_tier_follows_the_clock_past_the_deciders_period_end() {
        use SubscriptionStatus as S;
        let standings = [
            standing("sub_a", S::Active, Some(1)),
            standing("sub_p", S::PastDue, Some(-1)),
        ];
        // Now the active one decides; four days later it lapsed, and the past_due one (in its
        // 7-day grace) still grants Pro: the tier must come from it, not from the columns
        // written when sub_a decided.
        let decides = |days| decider(&standings, at(days)).and_then(|s| s.subscription_id.clone());
        assert_eq!(decides(0).as_deref(), Some("sub_a"));
        assert_eq!(decides(5).as_deref(), Some("sub_p"));
        assert_eq!(tier_over(&standings, at(5)), Tier::Pro);
        assert_eq!(standings[0].tier_at(at(5)), Tier::Free);
        assert_eq!(tier_over(&standings, at(6)), Tier::Free);
        // The purge keeps Pro's window for three more days.
        assert_eq!(retention_tier_over(&standings, at(8)), Tier::Pro);
        assert_eq!(retention_tier_over(&standings, at(9)), Tier::Free);
    }
}
