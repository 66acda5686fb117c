//! Exponential backoff with "equal jitter", for retries that many clients (or many writes of
//! one run) may start at the same moment: the Stripe client's retries of failed requests and
//! `stripe-sync`'s retries of writes that timed out waiting for a lock.

use std::time::Duration;

/// The pause before retry `attempt` (1 after the first failure): a step of `first`, doubled
/// at each next attempt up to `cap`, and of it between half and all ("equal jitter"), so
/// that retries that failed together do not retry together, yet each one does wait.
/// Saturates instead of overflowing; attempt 0 counts as 1.
pub fn equal_jitter(attempt: u32, first: Duration, cap: Duration) -> Duration {
    let step = first
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(cap);
    let half = step / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
    let jitter = getrandom::u64().unwrap_or(0) % spread;
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_half_and_all_of_the_capped_step() {
        let (first, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        for (attempt, step) in [(0, 100), (1, 100), (2, 200), (5, 1_600), (6, 2_000)] {
            let step = Duration::from_millis(step);
            for _ in 0..50 {
                let wait = equal_jitter(attempt, first, cap);
                assert!(wait >= step / 2 && wait <= step, "{attempt}: {wait:?}");
            }
        }
        // Far past the cap: saturates, no overflow.
        let wait = equal_jitter(u32::MAX, first, cap);
        assert!(wait >= cap / 2 && wait <= cap, "{wait:?}");
        // A step under two milliseconds has no whole millisecond to spread: its half.
        let tiny = Duration::from_millis(1);
        assert_eq!(equal_jitter(1, tiny, cap), tiny / 2);
    }
}
