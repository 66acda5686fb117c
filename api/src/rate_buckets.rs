//! Token buckets keyed by who is limited (a peer address, a bearer token's hash), bounded in
//! memory. Shared by the per-peer limit on failed tokens and the per-token request rate
//! ([`crate::token_gate`]).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// `capacity` units per key, refilled at `per_second`. A unit may be taken ahead of time, up
/// to a given wait: callers then wait their turn in the order they asked (each one's wait is
/// one more unit's refill than the one before), instead of all retrying at once.
#[derive(Clone)]
pub struct RateBuckets<K> {
    capacity: f64,
    per_second: f64,
    /// Most keys kept. When full, the keys back at a full bucket are forgotten; if that is
    /// not enough, all are (failing open: whoever has this many keys is not stopped by a
    /// per-key limit anyway). About 64 bytes per key, plus the key.
    most_keys: usize,
    buckets: Arc<Mutex<HashMap<K, Bucket>>>,
}

struct Bucket {
    /// Units left; below zero while callers wait for units taken ahead of time.
    left: f64,
    at: Instant,
}

impl<K: Hash + Eq> RateBuckets<K> {
    /// `capacity` is at least 1 and `per_second` above 0, or nothing is ever allowed.
    pub fn new(capacity: f64, per_second: f64, most_keys: usize) -> Self {
        Self {
            capacity,
            per_second,
            most_keys,
            buckets: Arc::default(),
        }
    }

    fn buckets(&self) -> MutexGuard<'_, HashMap<K, Bucket>> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one unit of `key`'s: `Ok` with how long to wait before using it (zero when one
    /// is there), or `Err` with how long until one would be, when that is over `max_wait`
    /// (nothing is taken then).
    pub fn take<Q>(&self, key: &Q, max_wait: Duration) -> Result<Duration, Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = Instant::now();
        let mut buckets = self.buckets();
        if buckets.len() >= self.most_keys && !buckets.contains_key(key) {
            let (capacity, per_second) = (self.capacity, self.per_second);
            buckets.retain(|_, bucket| {
                bucket.left + now.duration_since(bucket.at).as_secs_f64() * per_second < capacity
            });
            if buckets.len() >= self.most_keys {
                buckets.clear();
            }
        }
        if !buckets.contains_key(key) {
            let full = Bucket {
                left: self.capacity,
                at: now,
            };
            buckets.insert(key.to_owned(), full);
        }
        let Some(bucket) = buckets.get_mut(key) else {
            return Ok(Duration::ZERO);
        };
        bucket.left = (bucket.left + now.duration_since(bucket.at).as_secs_f64() * self.per_second)
            .min(self.capacity);
        bucket.at = now;
        let wait = Duration::from_secs_f64(((1.0 - bucket.left) / self.per_second).max(0.0));
        if wait > max_wait {
            return Err(wait);
        }
        bucket.left -= 1.0;
        Ok(wait)
    }

    /// Gives back one unit taken from `key` (a lookup that turned out not to count).
    pub fn give_back<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(bucket) = self.buckets().get_mut(key) {
            bucket.left = (bucket.left + 1.0).min(self.capacity);
        }
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets().len()
    }
}

/// The shortest a refusal by a rate is held before it is sent ([`held`]). Answered at once, a
/// refusal costs so little that a flood repeats it as fast as its clients can send: 1,000
/// clients got ~27,000 answers a second and kept both cores busy, which is what slowed
/// everyone else (docs/benchmarks.md, "Fairness under floods"). Held, each of a flood's
/// connections gets about one answer a second (HTTP/1.1 has one request in flight per
/// connection), for the cost of a timer.
pub const REFUSAL_DELAY: Duration = Duration::from_secs(1);

/// `refusal`, after [`REFUSAL_DELAY`] plus up to as much again, drawn at random: with a fixed
/// delay a flood's connections stayed in step, all answered in the same instant each second,
/// and a request arriving then waited behind a thousand others.
pub async fn held<T>(refusal: T) -> T {
    let spread = getrandom::u32()
        .map(|draw| f64::from(draw) / f64::from(u32::MAX))
        .unwrap_or(0.5);
    tokio::time::sleep(REFUSAL_DELAY.mul_f64(1.0 + spread)).await;
    refusal
}

/// Whole seconds for `Retry-After`: at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_turns_in_order_then_refusals() {
        let buckets: RateBuckets<String> = RateBuckets::new(2.0, 10.0, 10);
        let key = "a";
        let second = Duration::from_secs(1);
        assert_eq!(buckets.take(key, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(buckets.take(key, Duration::ZERO), Ok(Duration::ZERO));
        let refused = buckets.take(key, Duration::ZERO);
        assert!(matches!(refused, Err(wait) if wait <= Duration::from_millis(100)));
        let first = buckets.take(key, second).unwrap_or(second);
        let next = buckets.take(key, second).unwrap_or(Duration::ZERO);
        assert!(
            first <= Duration::from_millis(100) && next > first,
            "{first:?} {next:?}"
        );
        assert!(buckets.take("b", Duration::ZERO).is_ok());
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn memory_stays_bounded() {
        let buckets: RateBuckets<i32> = RateBuckets::new(1.0, 1.0, 4);
        for key in 0..100 {
            let _ = buckets.take(&key, Duration::ZERO);
        }
        assert!(buckets.tracked() <= 4);
    }
}
