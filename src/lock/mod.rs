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
//! - [`metered`]: [`MeteredLockStore`], the full lease API over a backend — metrics,
//!   `acquire(timeout)` with backoff ([`acquire`]), the scoped `with_lease`.
//! - [`from_settings`]: backend selection that fails closed.
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

pub mod acquire;
pub mod memory;
pub mod metered;
pub mod metrics;
pub mod redis;
pub mod redis_conn;
pub mod watchdog;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::{LockKind, Settings, SourceKind};
use crate::posting::PostingKey;

pub use self::acquire::{AcquireError, Backoff};
pub use self::memory::MemoryLockStore;
pub use self::metered::MeteredLockStore;
pub use self::metrics::{LatencySummary, LockMetricsSnapshot};
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

/// The lock store chosen by `lock.kind`, metered, with `lock.backoff_*` (see
/// [`metered_from_settings`]).
pub fn from_settings(settings: &Settings) -> Result<Arc<dyn LockStore>, LockError> {
    Ok(metered_from_settings(settings)?)
}

/// The lock store chosen by `lock.kind`, as a [`MeteredLockStore`] (for `acquire`, `with_lease`
/// and the metrics snapshot). Call inside a Tokio runtime.
///
/// Fails closed: the in-process store is refused when postings come from RabbitMQ, because it
/// excludes only this process's tasks while other workers consume the same queue — the original
/// system's silent fall-back that let every instance bid once. A Redis store is built without
/// waiting for Redis: while Redis is down every call errors (and postings are retried), it
/// never degrades to in-process locking.
pub fn metered_from_settings(settings: &Settings) -> Result<Arc<MeteredLockStore>, LockError> {
    let instance = settings.instance_id();
    let (inner, backend): (Arc<dyn LockStore>, &'static str) = match settings.lock.kind {
        LockKind::Redis => {
            let store = RedisLockStore::new(&settings.redis)?.with_instance(instance);
            (Arc::new(store), "redis")
        }
        LockKind::Memory => {
            if settings.source.kind == SourceKind::Amqp {
                return Err(LockError::Config(
                    "lock.kind = \"memory\" cannot be used with source.kind = \"amqp\": an \
                     in-process lock only excludes tasks of this process, while other workers \
                     consume the same queue, so each of them could bid on the same posting. Use \
                     lock.kind = \"redis\" (USE_REDIS_LOCKS=true with REDIS_URL or REDIS_HOST) \
                     for workers on RabbitMQ; the memory store is for the embedded mode \
                     (source.kind = \"memory\")."
                        .to_owned(),
                ));
            }
            let store = MemoryLockStore::new().with_instance(instance);
            (Arc::new(store), "memory")
        }
    };
    let backoff = Backoff::from(&settings.lock);
    Ok(Arc::new(
        MeteredLockStore::new(inner, backend).with_backoff(backoff),
    ))
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
