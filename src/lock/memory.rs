//! In-process lease store for the embedded mode (same semantics as Redis).
//!
//! Same contract as [`RedisLockStore`](super::RedisLockStore): a lease has a holder token and a
//! TTL, only its token extends or releases it, and an expired lease is free for the next taker.
//! Time is read from `tokio::time::Instant`, so tests can pause and advance the clock.
//! It excludes only tasks of this process: the composition root refuses it for a worker that
//! consumes from RabbitMQ, where other processes compete for the same postings.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::rate::gcra;
use super::{Admission, HolderInfo, Lease, LockError, LockStore, Rate, RateLimiter, Release};
use crate::posting::PostingKey;

/// Entries above which an insert sweeps out expired leases (amortised: the bar doubles).
const SWEEP_FLOOR: usize = 1024;

struct Entry {
    token: String,
    expires_at: Instant,
}

#[derive(Default)]
struct Table {
    leases: HashMap<PostingKey, Entry>,
    sweep_at: usize,
    /// Rate buckets: theoretical arrival time per marketplace, in ms since `epoch`.
    buckets: HashMap<String, u64>,
    epoch: Option<Instant>,
}

impl Table {
    /// The live entry for `key`, dropping it if it has expired.
    fn live(&mut self, key: &PostingKey, now: Instant) -> Option<&mut Entry> {
        if self.leases.get(key).is_some_and(|e| e.expires_at <= now) {
            self.leases.remove(key);
        }
        self.leases.get_mut(key)
    }

    /// Keeps memory bounded when leases expire without anyone touching their key again.
    fn sweep_if_large(&mut self, now: Instant) {
        if self.leases.len() < self.sweep_at.max(SWEEP_FLOOR) {
            return;
        }
        self.leases.retain(|_, e| e.expires_at > now);
        self.sweep_at = self.leases.len() * 2;
    }
}

/// Leases in process memory. Cheap to share behind an `Arc`.
pub struct MemoryLockStore {
    table: Mutex<Table>,
    instance: String,
}

impl Default for MemoryLockStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLockStore {
    /// An empty store whose tokens name the instance `memory`.
    pub fn new() -> Self {
        Self {
            table: Mutex::default(),
            instance: "memory".to_owned(),
        }
    }

    /// Sets the instance id written into this store's holder tokens.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave a half-written entry (each critical
        // section is a single map operation), so a poisoned table is still consistent.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `now + ttl`, saturating far in the future instead of overflowing on an absurd TTL.
fn expiry(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn checked(ttl: Duration) -> Result<Duration, LockError> {
    if ttl.is_zero() {
        return Err(LockError::Config("a lease TTL must be positive".to_owned()));
    }
    Ok(ttl)
}

#[async_trait]
impl LockStore for MemoryLockStore {
    async fn try_acquire(
        &self,
        key: &PostingKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        let ttl = checked(ttl)?;
        let now = Instant::now();
        let mut table = self.table();
        if table.live(key, now).is_some() {
            return Ok(None);
        }
        table.sweep_if_large(now);
        let token = super::new_token(&self.instance);
        table.leases.insert(
            key.clone(),
            Entry {
                token: token.clone(),
                expires_at: expiry(now, ttl),
            },
        );
        Ok(Some(Lease {
            key: key.clone(),
            token,
            ttl,
            acquired_at: now.into_std(),
        }))
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        let ttl = checked(ttl)?;
        let now = Instant::now();
        let mut table = self.table();
        Ok(match table.live(&lease.key, now) {
            Some(entry) if entry.token == lease.token => {
                entry.expires_at = expiry(now, ttl);
                true
            }
            _ => false,
        })
    }

    async fn release(&self, lease: &Lease) -> Result<Release, LockError> {
        let now = Instant::now();
        let mut table = self.table();
        let ours = table
            .live(&lease.key, now)
            .is_some_and(|entry| entry.token == lease.token);
        Ok(if ours {
            table.leases.remove(&lease.key);
            Release::Released
        } else {
            Release::NotOwned
        })
    }

    async fn holder(&self, key: &PostingKey) -> Result<Option<HolderInfo>, LockError> {
        let now = Instant::now();
        let mut table = self.table();
        Ok(table.live(key, now).map(|entry| HolderInfo {
            token: entry.token.clone(),
            ttl_left: entry.expires_at - now,
        }))
    }

    async fn health(&self) -> Result<(), LockError> {
        Ok(())
    }
}

#[async_trait]
impl RateLimiter for MemoryLockStore {
    async fn admit(&self, marketplace: &str, rate: &Rate) -> Result<Admission, LockError> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = *table.epoch.get_or_insert_with(Instant::now);
        let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let tat = table.buckets.get(marketplace).copied().unwrap_or(0);
        Ok(match gcra(tat, now, rate) {
            Ok(next) => {
                table.buckets.insert(marketplace.to_owned(), next);
                Admission::Go
            }
            Err(wait) => Admission::Wait(Duration::from_millis(wait)),
        })
    }
}
