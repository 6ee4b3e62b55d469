//! The lock port: short leases on a posting, so only one worker works on it at a time.
//!
//! A lease is cheap mutual exclusion, not the guarantee: a holder paused past its TTL or a Redis
//! restart lets a second worker in, which is why the ledger's epoch fence and the marketplace's
//! idempotency key sit behind it (see the spec's "Why a lock alone is not enough").
//!
//! Errors are never "held elsewhere": a store that cannot answer returns [`LockError`], and the
//! pipeline fails closed (retry later, no bid).

pub mod memory;
pub mod redis;
pub mod watchdog;

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::posting::PostingKey;

pub use self::memory::MemoryLockStore;
pub use self::redis::RedisLockStore;
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
    #[error("lock store unreachable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("lock store configuration: {0}")]
    Config(String),
}

impl LockError {
    /// Every lock store error is worth retrying later; none is a verdict on the posting.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
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

/// A unique holder token: instance id, process id and a random UUID.
pub fn new_token(instance: &str) -> String {
    format!(
        "{instance}:{}:{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}
