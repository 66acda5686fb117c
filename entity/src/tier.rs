//! The tier rule. Its SQL twin is the `user_tiers` view created by m006; a test proves they
//! agree for every status and period-end position on every backend.
//!
//! | status                  | current_period_end          | tier |
//! |-------------------------|-----------------------------|------|
//! | active, trialing        | null, or after now          | Pro  |
//! | active, trialing        | now or before               | Free |
//! | past_due                | less than 7 days before now | Pro  |
//! | past_due                | null, or 7+ days before now | Free |
//! | none, canceled, unpaid  | any                         | Free |

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::SubscriptionStatus;
use crate::users;

/// Days `past_due` keeps Pro after the period end. The SQL view fixes the same number; a
/// different value needs a migration that replaces the view.
pub const GRACE_PERIOD_DAYS: i64 = 7;

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

/// The rule itself, on plain values.
pub fn tier_for<Tz: TimeZone>(
    status: SubscriptionStatus,
    current_period_end: Option<&DateTime<Tz>>,
    now: DateTime<Utc>,
) -> Tier {
    let period_end = current_period_end.map(|end| end.with_timezone(&Utc));
    let pro = match status {
        SubscriptionStatus::Active | SubscriptionStatus::Trialing => {
            period_end.is_none_or(|end| end > now)
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

impl users::Model {
    /// The parsed status. The CHECK constraint makes an error here a sign of a bypassed schema.
    pub fn subscription_status(
        &self,
    ) -> Result<SubscriptionStatus, crate::UnknownSubscriptionStatus> {
        self.subscription_status.parse()
    }

    /// The user's tier right now.
    pub fn tier(&self) -> Tier {
        self.tier_at(Utc::now())
    }

    /// The user's tier at `now`; an unknown stored status grants nothing.
    pub fn tier_at(&self, now: DateTime<Utc>) -> Tier {
        match self.subscription_status() {
            Ok(status) => tier_for(status, self.current_period_end.as_ref(), now),
            Err(_) => Tier::Free,
        }
    }
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

    #[test]
    fn follows_the_table() {
        let now = at(0);
        use SubscriptionStatus as S;
        let cases = [
            (S::Active, None, Tier::Pro),
            (S::Active, Some(at(1)), Tier::Pro),
            (S::Active, Some(now), Tier::Free),
            (S::Trialing, Some(at(-1)), Tier::Free),
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
}
