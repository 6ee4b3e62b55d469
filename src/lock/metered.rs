//! The full lease API over any store: the metered port, waiting `acquire`, the scoped
//! `with_lease`, inspection and the metrics snapshot.
//!
//! [`MeteredLockStore`] wraps a backend and is itself a [`LockStore`], so the pipeline and the
//! watchdog use it unchanged while every call is counted here — the only place lock metrics are
//! emitted (see [`metrics`](super::metrics) for the names).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::acquire::{AcquireError, Backoff, acquire_with_backoff};
use super::metrics::{Attempt, LockMetrics, LockMetricsSnapshot};
use super::{HeldLease, HolderInfo, Lease, LockError, LockStore, Release};
use crate::posting::PostingKey;

/// A lock store with metrics, backoff and the scoped form. Share it as `Arc<MeteredLockStore>`.
pub struct MeteredLockStore {
    inner: Arc<dyn LockStore>,
    metrics: LockMetrics,
    backoff: Backoff,
}

impl MeteredLockStore {
    /// Wraps `inner`; `backend` labels its metrics (`redis`, `memory`). Default backoff.
    pub fn new(inner: Arc<dyn LockStore>, backend: &'static str) -> Self {
        Self {
            inner,
            metrics: LockMetrics::new(backend),
            backoff: Backoff::default(),
        }
    }

    /// Sets the backoff `acquire` waits with.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The counters so far.
    pub fn metrics(&self) -> LockMetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The wrapped backend (calls on it are not counted).
    pub fn inner(&self) -> &Arc<dyn LockStore> {
        &self.inner
    }

    /// Waits up to `timeout` for the lease, backing off with jitter between tries. A store
    /// failure ends the wait at once: it is never retried as if the lease were busy.
    pub async fn acquire(
        &self,
        key: &PostingKey,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Lease, AcquireError> {
        let result = acquire_with_backoff(self, key, ttl, timeout, &self.backoff).await;
        if matches!(result, Err(AcquireError::TimedOut { .. })) {
            self.metrics.timeout();
        }
        result
    }

    /// Whether anyone holds `key` right now.
    pub async fn is_held(&self, key: &PostingKey) -> Result<bool, LockError> {
        Ok(self.holder(key).await?.is_some())
    }

    /// Runs `work` under the lease on `key` (acquired as by [`acquire`](Self::acquire) and
    /// renewed meanwhile), then releases it. The lease is released on every path: after `work`
    /// returns (whatever it returns), and — through [`HeldLease`]'s drop — when `work` panics or
    /// this future is dropped (task cancelled or aborted). `work` should check
    /// [`HeldLease::is_lost`] before any irreversible step.
    pub async fn with_lease<T>(
        self: &Arc<Self>,
        key: &PostingKey,
        ttl: Duration,
        timeout: Duration,
        work: impl AsyncFnOnce(&HeldLease) -> T,
    ) -> Result<T, AcquireError> {
        let lease = self.acquire(key, ttl, timeout).await?;
        let held = HeldLease::start(self.clone(), lease);
        let value = work(&held).await;
        match held.release().await {
            Ok(Release::Released) => {}
            Ok(Release::NotOwned) => {
                tracing::warn!(%key, "Lease had already expired or been taken when work ended");
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "Releasing a lease failed; it will expire by TTL");
            }
        }
        Ok(value)
    }

    fn count<T>(&self, result: Result<T, LockError>) -> Result<T, LockError> {
        // Only "could not answer" counts; a caller's bad argument is not a Redis error.
        if matches!(result, Err(LockError::Unavailable(_))) {
            self.metrics.store_error();
        }
        result
    }
}

#[async_trait]
impl LockStore for MeteredLockStore {
    async fn try_acquire(
        &self,
        key: &PostingKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        // A measurement, not a deadline: the real clock even when a test pauses Tokio's.
        let started = std::time::Instant::now();
        let result = self.inner.try_acquire(key, ttl).await;
        let outcome = match &result {
            Ok(Some(_)) => Attempt::Won,
            Ok(None) => Attempt::Conflict,
            Err(_) => Attempt::Failed,
        };
        self.metrics.attempt(outcome, started.elapsed());
        self.count(result)
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        let result = self.inner.extend(lease, ttl).await;
        self.count(result)
    }

    async fn release(&self, lease: &Lease) -> Result<Release, LockError> {
        let result = self.inner.release(lease).await;
        self.count(result)
    }

    async fn holder(&self, key: &PostingKey) -> Result<Option<HolderInfo>, LockError> {
        let result = self.inner.holder(key).await;
        self.count(result)
    }

    async fn health(&self) -> Result<(), LockError> {
        let result = self.inner.health().await;
        self.count(result)
    }
}
