//! Times from Stripe as the database stores them: within what a MariaDB/MySQL `TIMESTAMP`
//! column holds, on every backend.
//!
//! The migrations create timezone-aware columns, which are `TIMESTAMP` on MariaDB/MySQL:
//! 1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC. A signed event with a period end after
//! that answered 500 there (strict `sql_mode` refuses the value). Stripe bills at most every
//! three years, so a real period ends before 2038 until 2035; converting the columns to
//! `DATETIME` copies `users` on MariaDB (docs/benchmarks.md has the cost), so for now a time
//! is stored clamped to that range, on every backend alike, and the tier it grants is the
//! same until 2038. docs/migrations.md ("Times after 2038") says when this must become the
//! conversion.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};

/// The last second a MariaDB/MySQL `TIMESTAMP` holds.
pub const LATEST_SECONDS: i64 = 2_147_483_647;
/// The first second it holds (0 is its "zero date").
pub const EARLIEST_SECONDS: i64 = 1;

/// `time`, clamped to what every backend's column stores.
pub fn stored_time(time: DateTime<Utc>) -> DateTime<FixedOffset> {
    let seconds = time.timestamp();
    let clamped = seconds.clamp(EARLIEST_SECONDS, LATEST_SECONDS);
    if clamped == seconds {
        return time.fixed_offset();
    }
    tracing::warn!(
        "a time from Stripe ({time}) is outside what a MariaDB TIMESTAMP holds: stored as \
         {clamped} (docs/migrations.md, \"Times after 2038\")"
    );
    Utc.timestamp_opt(clamped, 0)
        .single()
        .unwrap_or(time)
        .fixed_offset()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_2038_are_stored_at_the_cap_and_others_as_they_are() {
        let far = Utc
            .timestamp_opt(2_208_988_800, 0)
            .single()
            .unwrap_or_default();
        assert_eq!(stored_time(far).timestamp(), LATEST_SECONDS);
        let near = Utc
            .timestamp_opt(1_800_000_000, 0)
            .single()
            .unwrap_or_default();
        assert_eq!(stored_time(near), near.fixed_offset());
        let zero = Utc.timestamp_opt(0, 0).single().unwrap_or_default();
        assert_eq!(stored_time(zero).timestamp(), EARLIEST_SECONDS);
    }
}
