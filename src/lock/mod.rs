//! The lock port: short leases on a posting, so only one worker works on it at a time.
//!
//! A lease is cheap mutual exclusion, not the guarantee: a holder paused past its TTL or a Redis
//! restart lets a second worker in, which is why the ledger's epoch fence and the marketplace's
//! idempotency key sit behind it (see the spec's "Why a lock alone is not enough").
//!
//! Errors are never "held elsewhere": a store that cannot answer returns [`LockError`], and the
//! pipeline fails closed (retry later, no bid).
//!
//! # Layout
//! - [`LockStore`]: the port (`try_acquire`, `extend`, `release`, `holder`, `health`);
//!   [`LeaseBatches`]: many of them in one round trip (a backend's, for the lanes);
//!   [`RateLimiter`]: the fleet-wide request rate of each marketplace (`rate`).
//! - [`redis`] / [`redis_conn`]: [`RedisLockStore`] (single node, TLS, or Redis Cluster).
//! - [`memory`]: [`MemoryLockStore`], the same semantics in process (embedded mode only).
//! - [`watchdog`]: [`HeldLease`], renewal every TTL/3 and the lost-lease signal;
//!   [`renewals`]: [`Renewals`], which starts a lease's renewal only if it is still held when the
//!   first one falls due.
//! - [`metered`]: [`MeteredLockStore`] (and its rate limiter), a backend with the original
//!   system's counters.
//! - `batch`: [`BatchingLocks`], concurrent acquisitions and releases in one pipeline each (a
//!   single Redis node).
//!
//! Which of these wrap which backend is the composition root's choice (`app/ports.rs`).
//!
//! # Operations
//! - Run the lock Redis with `maxmemory-policy noeviction`: an evicted lease is a lease silently
//!   lost. Lock keys are small and short-lived, so this costs nothing.
//! - The lease is an optimisation (it keeps workers from duplicating work). The guarantee is the
//!   ledger's epoch fence plus the marketplace idempotency key: they hold even when a lease is
//!   lost to a pause, a Redis restart or a failover.
//! - Choose `lock.ttl` well above the slowest step under the lease — config validation requires
//!   the marketplace `timeout + connect_timeout` to fit in half of it — and short enough that a
//!   crashed worker's postings are retried soon (it only delays them, never loses them).

mod batch;
pub mod memory;
pub mod metered;
pub mod metrics;
pub mod rate;
pub mod redis;
pub mod redis_conn;
pub mod renewals;
pub mod watchdog;

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::posting::PostingKey;

pub use self::batch::BatchingLocks;
pub use self::memory::MemoryLockStore;
pub use self::metered::{MeteredLockStore, MeteredRateLimiter};
pub use self::metrics::{LatencySummary, LockMetricsSnapshot};
pub use self::rate::{Admission, Rate};
pub use self::redis::RedisLockStore;
pub use self::redis_conn::RedisOptions;
pub use self::renewals::Renewals;
pub use self::watchdog::HeldLease;

/// A lease granted by a [`LockStore`]: the key, the unique token of this holder and its TTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The posting this lease covers.
    pub key: PostingKey,
    /// Unique per acquisition; only this token can extend or release the lease.
    pub token: String,
    /// TTL the lease was granted (and is renewed) with.
    pub ttl: Duration,
    /// When the lease was granted, by this process's monotonic clock.
    pub acquired_at: Instant,
}

/// Result of a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The lease was ours and is now gone.
    Released,
    /// The key is absent or held by another token (our lease had expired); nothing was deleted.
    NotOwned,
}

/// Who holds a key right now, and for how much longer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderInfo {
    pub token: String,
    pub ttl_left: Duration,
}

/// A lock store failure: the store could not answer. Never means "held by someone else".
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The store could not be reached or failed the call.
    #[error("lock store unreachable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store did not answer within the call's deadline (counted as `lock_timeouts`).
    #[error("lock store did not answer {op} within {}", humantime::format_duration(*after))]
    TimedOut { op: &'static str, after: Duration },
    /// The store cannot be built or used as configured.
    #[error("lock store configuration: {0}")]
    Config(String),
}

impl LockError {
    /// Whether retrying later may succeed; a configuration problem will not go away.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Config(_))
    }
}

/// Storage of posting leases (Redis in production, memory for the embedded mode).
#[async_trait]
pub trait LockStore: Send + Sync + 'static {
    /// Takes the lease if nobody holds it; `Ok(None)` when another holder has it.
    async fn try_acquire(
        &self,
        key: &PostingKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError>;

    /// Resets the TTL of a lease we still hold; `Ok(false)` if it is no longer ours.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError>;

    /// Deletes the lease only if it is still ours (compare-and-delete).
    async fn release(&self, lease: &Lease) -> Result<Release, LockError>;

    /// Inspects a key: its holder's token and TTL left, or `None` if free.
    async fn holder(&self, key: &PostingKey) -> Result<Option<HolderInfo>, LockError>;

    /// Checks the store answers (for `/readyz`).
    async fn health(&self) -> Result<(), LockError>;
}

/// A lock store that takes and releases many leases in one round trip (a single Redis node):
/// what [`BatchingLocks`] gathers concurrent postings' calls into.
#[async_trait]
pub trait LeaseBatches: LockStore {
    /// Takes the leases of `keys` (each as [`LockStore::try_acquire`] would); answers in the
    /// order asked, a failure fails them all.
    async fn try_acquire_many(
        &self,
        keys: &[PostingKey],
        ttl: Duration,
    ) -> Result<Vec<Option<Lease>>, LockError>;

    /// Releases `leases` (each as [`LockStore::release`] would); answers in the order asked, a
    /// failure fails them all.
    async fn release_many(&self, leases: &[Lease]) -> Result<Vec<Release>, LockError>;
}

/// The fleet-wide request rate of each marketplace (`rate.rs`): a bucket shared by every worker
/// using the same store (Redis), or by this process's tasks (memory).
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one request slot of `marketplace`'s bucket at `rate`, or says how long to wait.
    async fn admit(&self, marketplace: &str, rate: &Rate) -> Result<Admission, LockError>;
}

/// A unique holder token: instance id, process id and 128 random bits (32 hex digits).
///
/// The token only has to be unique, not secret (it is no credential: Redis access is), so the
/// random part comes from the thread-local `fastrand` generator rather than a `getrandom` call,
/// and the process id is read once: two system calls fewer on every acquisition.
pub fn new_token(instance: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    static PID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let pid = PID.get_or_init(|| std::process::id().to_string());
    // Built by hand: this runs on every acquisition, and `format!` padding was measurable.
    let mut token = String::with_capacity(instance.len() + pid.len() + 34);
    token.push_str(instance);
    token.push(':');
    token.push_str(pid);
    token.push(':');
    let random = fastrand::u128(..);
    for shift in (0..32).rev() {
        token.push(char::from(HEX[((random >> (shift * 4)) & 0xf) as usize]));
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_instance_and_process_and_are_unique() {
        let tokens: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_token("w-1")).collect();
        assert_eq!(tokens.len(), 10_000);
        let token = tokens.iter().next().unwrap();
        let prefix = format!("w-1:{}:", std::process::id());
        let random = token.strip_prefix(&prefix).expect("instance:pid: prefix");
        assert_eq!(random.len(), 32);
        assert!(
            random
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
