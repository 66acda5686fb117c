//! A subscription's status as we keep it: the six values `users.subscription_status` admits
//! (`chk_subscription_status`, m006), and `incomplete` and `paused`, which only
//! `stripe_subscriptions.status` holds (m011 explains why the CHECK was not widened).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    None,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    /// Stripe's `incomplete`: the first payment has not succeeded yet (a payment is waiting;
    /// Stripe ends it as `incomplete_expired` after 23 hours).
    Incomplete,
    /// Stripe's `paused`: a trial ended without a payment method; no invoices until resumed.
    Paused,
}

/// A stored or supplied status outside the six.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown subscription status {0:?}: expected one of none, trialing, active, past_due, \
     canceled, unpaid, incomplete, paused"
)]
pub struct UnknownSubscriptionStatus(pub String);

impl SubscriptionStatus {
    pub const ALL: [SubscriptionStatus; 8] = [
        Self::None,
        Self::Trialing,
        Self::Active,
        Self::PastDue,
        Self::Canceled,
        Self::Unpaid,
        Self::Incomplete,
        Self::Paused,
    ];

    /// Whether `users.subscription_status` admits it (six of them do).
    pub fn fits_user_column(self) -> bool {
        self.for_user_column() == self
    }

    /// The nearest status `users.subscription_status` admits: `incomplete` grants nothing yet
    /// (`none`), `paused` grants nothing until paid (`unpaid`).
    pub fn for_user_column(self) -> Self {
        match self {
            Self::Incomplete => Self::None,
            Self::Paused => Self::Unpaid,
            other => other,
        }
    }

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
            Self::Incomplete => "incomplete",
            Self::Paused => "paused",
        }
    }
}

impl FromStr for SubscriptionStatus {
    type Err = UnknownSubscriptionStatus;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == raw)
            .ok_or_else(|| UnknownSubscriptionStatus(raw.to_owned()))
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<SubscriptionStatus> for String {
    fn from(status: SubscriptionStatus) -> Self {
        status.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_status() {
        for status in SubscriptionStatus::ALL {
            assert_eq!(status.as_str().parse::<SubscriptionStatus>(), Ok(status));
        }
    }

    #[test]
    fn the_user_column_gets_one_of_its_six() {
        for status in SubscriptionStatus::ALL {
            assert!(status.for_user_column().fits_user_column());
        }
        let fitting = SubscriptionStatus::ALL
            .into_iter()
            .filter(|s| s.fits_user_column())
            .count();
        assert_eq!(fitting, 6);
    }

    #[test]
    fn refuses_anything_else_with_a_clear_error() {
        for raw in ["", "Active", "incomplete_expired", "past-due", " none"] {
            let err = raw.parse::<SubscriptionStatus>().unwrap_err();
            assert_eq!(err, UnknownSubscriptionStatus(raw.to_owned()));
            assert!(err.to_string().contains("expected one of"));
        }
    }
}
