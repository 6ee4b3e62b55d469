//! [`MeteredLockStore`]: a backend with the original system's lock counters.
//!
//! It wraps a backend and is itself a [`LockStore`], so the pipeline and the watchdog use it
//! unchanged while every call is counted here — the only place lock metrics are emitted (see
//! [`metrics`](super::metrics) for the names).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::metrics::{Attempt, LockMetrics, LockMetricsSnapshot};
use super::{Admission, HolderInfo, Lease, LockError, LockStore, Rate, RateLimiter, Release};
use crate::posting::PostingKey;

/// A lock store with metrics. Share it as `Arc<MeteredLockStore>`.
pub struct MeteredLockStore {
    inner: Arc<dyn LockStore>,
    metrics: Arc<LockMetrics>,
}

impl MeteredLockStore {
    /// Wraps `inner`; `backend` labels its metrics (`redis`, `memory`).
    pub fn new(inner: Arc<dyn LockStore>, backend: &'static str) -> Self {
        Self {
            inner,
            metrics: Arc::new(LockMetrics::new(backend)),
        }
    }

    /// `rates` counted into this store's metrics (its errors are the lock store's errors).
    pub fn rate_limiter(&self, rates: Arc<dyn RateLimiter>) -> MeteredRateLimiter {
        MeteredRateLimiter {
            inner: rates,
            metrics: self.metrics.clone(),
        }
    }

    /// The counters so far.
    pub fn metrics(&self) -> LockMetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The wrapped backend (calls on it are not counted).
    pub fn inner(&self) -> &Arc<dyn LockStore> {
        &self.inner
    }

    fn count<T>(&self, result: Result<T, LockError>) -> Result<T, LockError> {
        count(&self.metrics, result)
    }
}

/// Only "could not answer" counts; a caller's bad argument is not a Redis error.
fn count<T>(metrics: &LockMetrics, result: Result<T, LockError>) -> Result<T, LockError> {
    match &result {
        Err(LockError::Unavailable(_)) => metrics.store_error(),
        Err(LockError::TimedOut { .. }) => {
            metrics.store_error();
            metrics.timeout();
        }
        _ => {}
    }
    result
}

/// A rate limiter counted into a [`MeteredLockStore`]'s metrics.
pub struct MeteredRateLimiter {
    inner: Arc<dyn RateLimiter>,
    metrics: Arc<LockMetrics>,
}

#[async_trait]
impl RateLimiter for MeteredRateLimiter {
    async fn admit(&self, marketplace: &str, rate: &Rate) -> Result<Admission, LockError> {
        let result = self.inner.admit(marketplace, rate).await;
        count(&self.metrics, result)
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
