//! Waiting for a busy lease: exponential backoff with jitter (via `backon`) up to a deadline.
//!
//! Delays grow `initial → max` by `factor` (default 50 ms → 1 s, ×1.5, from `lock.backoff_*`).
//! Each wait is drawn from `[d/2, d)` around the nominal delay `d`, so contenders that collided
//! once do not retry in lockstep, and no wait exceeds `max`. `backon` rather than `backoff`:
//! the latter is unmaintained (RUSTSEC-2025-0012). Time is the Tokio clock, so tests can pause it.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use super::{Lease, LockError, LockStore};
use crate::config::LockSettings;
use crate::posting::PostingKey;

/// Backoff between acquire attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// First nominal delay.
    pub initial: Duration,
    /// Cap of the nominal delay (and of every wait).
    pub max: Duration,
    /// Growth factor per attempt (≥ 1).
    pub factor: f32,
}

impl Default for Backoff {
    /// The original lock manager's schedule: 50 ms → 1 s, ×1.5.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            factor: 1.5,
        }
    }
}

impl From<&LockSettings> for Backoff {
    fn from(s: &LockSettings) -> Self {
        Self {
            initial: s.backoff_initial,
            max: s.backoff_max,
            factor: s.backoff_factor,
        }
    }
}

impl Backoff {
    /// The endless sequence of waits, jittered into `[d/2, d)` of each nominal delay `d`.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max.max(self.initial))
            .with_factor(self.factor.max(1.0))
            .with_jitter()
            .without_max_times()
            .build()
            // backon's jitter draws from [d, 2d); halving keeps the spread and honours `max`.
            .map(|d| d / 2)
    }
}

/// `acquire` did not get the lease.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Another holder kept the lease for the whole wait.
    #[error("lease on {key} still held by another holder after waiting {}", humantime::format_duration(*.waited))]
    TimedOut { key: PostingKey, waited: Duration },
    /// The store could not answer; waiting stopped at the first failure (fail closed).
    #[error(transparent)]
    Store(#[from] LockError),
}

impl AcquireError {
    /// Both cases are worth retrying later; neither is a verdict on the posting.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::TimedOut { .. } => true,
            Self::Store(e) => e.is_retryable(),
        }
    }
}

/// Tries `store` until it grants the lease, `timeout` has passed (one last try is made at the
/// deadline), or it fails. A zero timeout is a single try.
pub(super) async fn acquire_with_backoff(
    store: &dyn LockStore,
    key: &PostingKey,
    ttl: Duration,
    timeout: Duration,
    backoff: &Backoff,
) -> Result<Lease, AcquireError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut delays = backoff.delays();
    loop {
        if let Some(lease) = store.try_acquire(key, ttl).await? {
            return Ok(lease);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(AcquireError::TimedOut {
                key: key.clone(),
                waited: now - started,
            });
        }
        let wait = delays.next().unwrap_or(backoff.max);
        tokio::time::sleep(wait.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_respect_the_cap() {
        let b = Backoff::default();
        let delays: Vec<Duration> = b.delays().take(40).collect();
        assert!(delays[0] >= Duration::from_millis(25) && delays[0] < Duration::from_millis(50));
        assert!(delays.iter().all(|d| *d <= b.max));
        // Late delays sit at the cap's jitter band [max/2, max).
        assert!(delays[30..].iter().all(|d| *d >= b.max / 2));
        // Jitter: two schedules differ.
        let other: Vec<Duration> = b.delays().take(40).collect();
        assert_ne!(delays, other);
    }
}
