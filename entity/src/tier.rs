//! The tier rule. Its SQL twin is the `user_tiers` view (m010); a test proves they agree for
//! every status and period-end position, over several subscriptions, on every backend.
//!
//! One subscription grants Pro by this table:
//!
//! | status                  | current_period_end                  | tier |
//! |-------------------------|-------------------------------------|------|
//! | active, trialing        | null, or less than 3 days before now | Pro  |
//! | active, trialing        | 3+ days before now                  | Free |
//! | past_due                | less than 7 days before now         | Pro  |
//! | past_due                | null, or 7+ days before now         | Free |
//! | none, canceled, unpaid  | any                                 | Free |
//!
//! A user is Pro when any of their subscriptions grants Pro (their own billing columns count
//! as one more: they are a copy of one subscription, or were set by hand). The columns show
//! the subscription that decides, by [`decider`].

use std::cmp::Ordering;

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::SubscriptionStatus;

/// Days `past_due` keeps Pro after the period end. The SQL view fixes the same number; a
/// different value needs a migration that replaces the view.
pub const GRACE_PERIOD_DAYS: i64 = 7;

/// Days `active`/`trialing` keep Pro after the period end, waiting for Stripe's renewal event
/// (it can come hours late, or days late while our endpoint is down). m010 fixes the same
/// number in the view (`RENEWAL_GRACE_DAYS` there; a test checks they are equal).
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

/// The rule for one subscription, on plain values.
pub fn tier_for<Tz: TimeZone>(
    status: SubscriptionStatus,
    current_period_end: Option<&DateTime<Tz>>,
    now: DateTime<Utc>,
) -> Tier {
    let period_end = current_period_end.map(|end| end.with_timezone(&Utc));
    let pro = match status {
        SubscriptionStatus::Active | SubscriptionStatus::Trialing => {
            period_end.is_none_or(|end| end + Duration::days(RENEWAL_GRACE_DAYS) > now)
        }
        SubscriptionStatus::PastDue => {
            period_end.is_some_and(|end| end + Duration::days(GRACE_PERIOD_DAYS) > now)
        }
        SubscriptionStatus::None | SubscriptionStatus::Canceled | SubscriptionStatus::Unpaid => {
            false
        }
    };
    if pro { Tier::Pro } else { Tier::Free }
}

/// One subscription as the tier rule reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub subscription_id: Option<String>,
    pub status: SubscriptionStatus,
    pub current_period_end: Option<DateTime<Utc>>,
}

impl Standing {
    /// A stored status outside the six grants nothing.
    pub fn from_stored<Tz: TimeZone>(
        subscription_id: Option<String>,
        status: &str,
        current_period_end: Option<&DateTime<Tz>>,
    ) -> Self {
        Self {
            subscription_id,
            status: status.parse().unwrap_or(SubscriptionStatus::None),
            current_period_end: current_period_end.map(|end| end.with_timezone(&Utc)),
        }
    }

    pub fn tier_at(&self, now: DateTime<Utc>) -> Tier {
        tier_for(self.status, self.current_period_end.as_ref(), now)
    }
}

/// `active` > `trialing` > `past_due` > `unpaid` > `canceled` > `none`.
fn status_order(status: SubscriptionStatus) -> u8 {
    match status {
        SubscriptionStatus::Active => 5,
        SubscriptionStatus::Trialing => 4,
        SubscriptionStatus::PastDue => 3,
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

    fn standing(id: &str, status: SubscriptionStatus, end: Option<i64>) -> Standing {
        Standing {
            subscription_id: Some(id.to_owned()),
            status,
            current_period_end: end.map(at),
        }
    }

    #[test]
    fn follows_the_table() {
        let now = at(0);
        use SubscriptionStatus as S;
        let cases = [
            (S::Active, None, Tier::Pro),
            (S::Active, Some(at(1)), Tier::Pro),
            (S::Active, Some(now), Tier::Pro),
            (S::Active, Some(at(-2)), Tier::Pro),
            (S::Active, Some(at(-3)), Tier::Free),
            (S::Trialing, Some(at(-1)), Tier::Pro),
            (S::Trialing, Some(at(-4)), Tier::Free),
            (S::PastDue, None, Tier::Free),
            (S::PastDue, Some(at(-6)), Tier::Pro),
            (S::PastDue, Some(at(-7)), Tier::Free),
            (S::Canceled, Some(at(30)), Tier::Free),
            (S::Unpaid, None, Tier::Free),
            (S::None, Some(at(1)), Tier::Free),
        ];
        for (status, end, expected) in cases {
            assert_eq!(
                tier_for(status, end.as_ref(), now),
                expected,
                "{status} {end:?}"
            );
        }
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
