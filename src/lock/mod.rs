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
//! - [`LockStore`]: the port (`try_acquire`, `extend`, `release`, `holder`, `health`).
//! - [`redis`] / [`redis_conn`]: [`RedisLockStore`] (single node, TLS, or Redis Cluster).
//! - [`memory`]: [`MemoryLockStore`], the same semantics in process (embedded mode only).
//! - [`watchdog`]: [`HeldLease`], renewal every TTL/3 and the lost-lease signal.
//! - [`metered`]: [`MeteredLockStore`], a backend with the original system's counters.
//! - `batch`: [`BatchingLocks`], concurrent acquisitions and releases in one pipeline each (a
//!   single Redis node).
//! - [`from_settings`]: the backend `lock.kind` names.
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
pub mod watchdog;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::{LockKind, RedisSettings};
use crate::posting::PostingKey;

pub use self::batch::BatchingLocks;
pub use self::memory::MemoryLockStore;
pub use self::metered::MeteredLockStore;
pub use self::metrics::{LatencySummary, LockMetricsSnapshot};
pub use self::rate::{Admission, Rate};
pub use self::redis::RedisLockStore;
pub use self::redis_conn::RedisOptions;
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

    /// Takes the leases of `keys` (each as [`try_acquire`](Self::try_acquire) would), in one
    /// round trip where the backend can; answers in the order asked, a failure fails them all.
    async fn try_acquire_many(
        &self,
        keys: &[PostingKey],
        ttl: Duration,
    ) -> Result<Vec<Option<Lease>>, LockError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.try_acquire(key, ttl).await?);
        }
        Ok(out)
    }

    /// Releases `leases` (each as [`release`](Self::release) would), in one round trip where
    /// the backend can; answers in the order asked, a failure fails them all.
    async fn release_many(&self, leases: &[Lease]) -> Result<Vec<Release>, LockError> {
        let mut out = Vec::with_capacity(leases.len());
        for lease in leases {
            out.push(self.release(lease).await?);
        }
        Ok(out)
    }

    /// Resets the TTL of a lease we still hold; `Ok(false)` if it is no longer ours.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError>;

    /// Deletes the lease only if it is still ours (compare-and-delete).
    async fn release(&self, lease: &Lease) -> Result<Release, LockError>;

    /// Inspects a key: its holder's token and TTL left, or `None` if free.
    async fn holder(&self, key: &PostingKey) -> Result<Option<HolderInfo>, LockError>;

    /// Checks the store answers (for `/readyz`).
    async fn health(&self) -> Result<(), LockError>;

    /// Takes one request slot of `marketplace`'s bucket at `rate` (shared by every worker on
    /// this store; see `rate.rs`). A store without buckets admits everything.
    async fn admit(&self, marketplace: &str, rate: &Rate) -> Result<Admission, LockError> {
        let _ = (marketplace, rate);
        Ok(Admission::Go)
    }
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

/// The lock store `kind` names, metered, its holder tokens naming `instance`. A Redis store is
/// built without waiting for Redis: while Redis is down every call errors (and postings wait),
/// it never degrades to in-process locking. Whether the in-process store is acceptable for a
/// deployment is the composition root's decision ([`crate::app`]). Call inside a Tokio runtime.
pub fn from_settings(
    kind: LockKind,
    redis: &RedisSettings,
    instance: &str,
) -> Result<Arc<MeteredLockStore>, LockError> {
    let (inner, backend): (Arc<dyn LockStore>, &'static str) = match kind {
        LockKind::Redis => {
            let store = RedisLockStore::new(redis)?.with_instance(instance);
            // A single node answers a pipeline of lease commands in one round trip; a cluster
            // spreads the keys over its nodes, so there each call goes on its own.
            let store: Arc<dyn LockStore> = if store.is_cluster() {
                Arc::new(store)
            } else {
                Arc::new(BatchingLocks::new(Arc::new(store)))
            };
            (store, "redis")
        }
        LockKind::Memory => (
            Arc::new(MemoryLockStore::new().with_instance(instance)),
            "memory",
        ),
    };
    Ok(Arc::new(MeteredLockStore::new(inner, backend)))
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
