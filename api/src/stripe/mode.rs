//! Live or test mode: which of Stripe's two worlds this deployment serves.
//!
//! Every Stripe object and event carries `livemode`. A deployment serves one mode: events of
//! the other are acknowledged and ignored, so a test-mode secret configured beside a live one
//! (or a test endpoint pointed at production) can never grant Pro with a test card.
//!
//! The mode is `STRIPE_MODE` (`live` or `test`) when set, else what `STRIPE_API_KEY`'s prefix
//! says (`sk_live_`/`rk_live_`, `sk_test_`/`rk_test_`). With webhook secrets configured and
//! neither set, or the two disagreeing, the server refuses to start.

use std::fmt;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StripeMode {
    Live,
    Test,
}

impl StripeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StripeMode::Live => "live",
            StripeMode::Test => "test",
        }
    }

    /// The mode of an API key, by its prefix; None for a key whose prefix says nothing.
    pub fn of_key(key: &str) -> Option<StripeMode> {
        let key = key.trim();
        if ["sk_live_", "rk_live_"].iter().any(|p| key.starts_with(p)) {
            Some(StripeMode::Live)
        } else if ["sk_test_", "rk_test_"].iter().any(|p| key.starts_with(p)) {
            Some(StripeMode::Test)
        } else {
            None
        }
    }

    /// Whether an event's `livemode` belongs to this mode. An event without `livemode` does
    /// not: Stripe always sends it.
    pub fn admits(self, livemode: Option<bool>) -> bool {
        livemode == Some(self == StripeMode::Live)
    }
}

impl fmt::Display for StripeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the mode could not be settled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    #[error(
        "STRIPE_WEBHOOK_SECRETS is set but the Stripe mode is not: set STRIPE_MODE=live or \
         STRIPE_MODE=test (--stripe-mode), or STRIPE_API_KEY, whose prefix says it"
    )]
    Unknown,
    #[error(
        "STRIPE_MODE is {setting} but STRIPE_API_KEY is a {key} key: one deployment serves one \
         mode"
    )]
    Conflict {
        setting: StripeMode,
        key: StripeMode,
    },
}

/// The mode: the setting, else the key's; both must agree when both are given. None when
/// neither says.
pub fn resolve(
    setting: Option<StripeMode>,
    api_key: Option<&str>,
) -> Result<Option<StripeMode>, ModeError> {
    let from_key = api_key.and_then(StripeMode::of_key);
    match (setting, from_key) {
        (Some(setting), Some(key)) if setting != key => Err(ModeError::Conflict { setting, key }),
        (Some(mode), _) | (None, Some(mode)) => Ok(Some(mode)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_prefix_says_the_mode() {
        assert_eq!(StripeMode::of_key("sk_live_abc"), Some(StripeMode::Live));
        assert_eq!(StripeMode::of_key("rk_live_abc"), Some(StripeMode::Live));
        assert_eq!(StripeMode::of_key("sk_test_abc"), Some(StripeMode::Test));
        assert_eq!(StripeMode::of_key("rk_test_abc"), Some(StripeMode::Test));
        assert_eq!(StripeMode::of_key("pk_live_abc"), None);
        assert_eq!(StripeMode::of_key("whatever"), None);
    }

    #[test]
    fn the_setting_and_the_key_must_agree() {
        use StripeMode::{Live, Test};
        assert_eq!(resolve(Some(Live), None), Ok(Some(Live)));
        assert_eq!(resolve(None, Some("sk_test_x")), Ok(Some(Test)));
        assert_eq!(resolve(Some(Test), Some("sk_test_x")), Ok(Some(Test)));
        assert_eq!(resolve(None, Some("odd")), Ok(None));
        assert_eq!(resolve(None, None), Ok(None));
        assert_eq!(
            resolve(Some(Test), Some("sk_live_x")),
            Err(ModeError::Conflict {
                setting: Test,
                key: Live
            })
        );
    }

    #[test]
    fn admits_only_its_own_events() {
        assert!(StripeMode::Live.admits(Some(true)));
        assert!(!StripeMode::Live.admits(Some(false)));
        assert!(StripeMode::Test.admits(Some(false)));
        assert!(!StripeMode::Test.admits(Some(true)));
        assert!(!StripeMode::Test.admits(None));
    }
}
