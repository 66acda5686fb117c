//! `users.subscription_status`, parsed: the six values `chk_subscription_status` admits.

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
}

/// A stored or supplied status outside the six.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown subscription status {0:?}: expected one of none, trialing, active, past_due, \
     canceled, unpaid"
)]
pub struct UnknownSubscriptionStatus(pub String);

impl SubscriptionStatus {
    pub const ALL: [SubscriptionStatus; 6] = [
        Self::None,
        Self::Trialing,
        Self::Active,
        Self::PastDue,
        Self::Canceled,
        Self::Unpaid,
    ];

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
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
    fn refuses_anything_else_with_a_clear_error() {
        for raw in ["", "Active", "incomplete", "past-due", " none"] {
            let err = raw.parse::<SubscriptionStatus>().unwrap_err();
            assert_eq!(err, UnknownSubscriptionStatus(raw.to_owned()));
            assert!(err.to_string().contains("expected one of"));
        }
    }
}
