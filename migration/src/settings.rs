//! Knobs read from the environment, each with a safe default (documented in docs/configuration.md).

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use sea_orm_migration::sea_orm::DbErr;

use crate::error::{Error, raise};

/// How lock-timed steps wait for their table lock.
#[derive(Clone, Debug)]
pub struct LockSettings {
    /// Longest a DDL statement may queue for its lock. While it queues, every other query on
    /// that table queues behind it, so this bounds the stall the migration can cause.
    pub lock_timeout: Duration,
    /// Tries before giving up with a message naming the step.
    pub attempts: u32,
}

pub const LOCK_TIMEOUT_ENV: &str = "MIGRATION_LOCK_TIMEOUT_MS";
pub const LOCK_ATTEMPTS_ENV: &str = "MIGRATION_LOCK_ATTEMPTS";

impl LockSettings {
    pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 50;
    pub const DEFAULT_ATTEMPTS: u32 = 40;
    const MAX_BACKOFF: Duration = Duration::from_secs(2);

    /// Read inside a migration, so a bad value crosses SeaORM's runner as a `DbErr`.
    pub fn from_env() -> Result<Self, DbErr> {
        let lock_timeout_ms =
            env_number(LOCK_TIMEOUT_ENV, Self::DEFAULT_LOCK_TIMEOUT_MS).map_err(raise)?;
        let attempts =
            env_number(LOCK_ATTEMPTS_ENV, u64::from(Self::DEFAULT_ATTEMPTS)).map_err(raise)?;
        Ok(Self {
            lock_timeout: Duration::from_millis(lock_timeout_ms.max(1)),
            attempts: u32::try_from(attempts.max(1)).unwrap_or(u32::MAX),
        })
    }

    /// Exponential backoff from 50 ms up to 2 s, with "equal jitter" (half fixed, half random)
    /// so that several waiting migrators or retrying app servers do not march in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = Duration::from_millis(50)
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(Self::MAX_BACKOFF);
        let half = ceiling / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// The defaults, whatever the environment says (what checksums are computed with).
impl Default for LockSettings {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_millis(Self::DEFAULT_LOCK_TIMEOUT_MS),
            attempts: Self::DEFAULT_ATTEMPTS,
        }
    }
}

/// A number in [0, 1) from the standard library's randomly keyed hasher: enough for jitter,
/// without a dependency.
pub fn random_fraction() -> f64 {
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

pub fn env_number(name: &'static str, default: u64) -> Result<u64, Error> {
    match std::env::var(name) {
        Ok(raw) => raw.trim().parse().map_err(|_| Error::Setting {
            name,
            given: raw.clone(),
        }),
        Err(_) => Ok(default),
    }
}
