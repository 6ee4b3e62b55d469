//! [`BatchingLocks`]: the lease calls of concurrent postings gathered into one round trip each
//! (a [`Lane`] for acquisitions, one for releases), over a store whose batch calls are real
//! pipelines (a single Redis node). Every member gets its own answer; a failed batch fails each
//! member, so a posting never takes "could not ask" for "held elsewhere".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Admission, HolderInfo, Lease, LockError, LockStore, Rate, Release};
use crate::lane::{Lane, LaneConfig, LaneError};
use crate::posting::PostingKey;

/// How the lease lanes batch: as the ledger's, a worker's prefetch in one batch and a lone call
/// waiting at most a millisecond.
pub const LANE: LaneConfig = LaneConfig {
    name: "leases",
    ..crate::ledger::batch::LANE
};

/// A lock store whose single acquisitions and releases are batched; the rest go straight
/// through.
pub struct BatchingLocks {
    inner: Arc<dyn LockStore>,
    acquires: Lane<(PostingKey, Duration), Option<Lease>, LockError>,
    releases: Lane<Lease, Release, LockError>,
}

impl BatchingLocks {
    /// Wraps `inner`. Must be called inside a tokio runtime (it starts the lanes' tasks).
    pub fn new(inner: Arc<dyn LockStore>) -> Self {
        let acquires = {
            let inner = inner.clone();
            Lane::start(LANE, move |asks: Vec<(PostingKey, Duration)>| {
                let inner = inner.clone();
                async move { acquire_by_ttl(inner.as_ref(), asks).await }
            })
        };
        let releases = {
            let inner = inner.clone();
            Lane::start(LANE, move |leases: Vec<Lease>| {
                let inner = inner.clone();
                async move { inner.release_many(&leases).await }
            })
        };
        Self {
            inner,
            acquires,
            releases,
        }
    }
}

/// One `try_acquire_many` per TTL in the batch (a worker asks with one TTL, so one call), the
/// answers in the order asked.
async fn acquire_by_ttl(
    store: &dyn LockStore,
    asks: Vec<(PostingKey, Duration)>,
) -> Result<Vec<Option<Lease>>, LockError> {
    let mut answers: Vec<Option<Option<Lease>>> = asks.iter().map(|_| None).collect();
    let mut ttls: Vec<Duration> = asks.iter().map(|(_, ttl)| *ttl).collect();
    ttls.sort_unstable();
    ttls.dedup();
    for ttl in ttls {
        let (at, keys): (Vec<usize>, Vec<PostingKey>) = asks
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| *t == ttl)
            .map(|(i, (key, _))| (i, key.clone()))
            .unzip();
        for (i, lease) in at
            .into_iter()
            .zip(store.try_acquire_many(&keys, ttl).await?)
        {
            answers[i] = Some(lease);
        }
    }
    Ok(answers.into_iter().flatten().collect())
}

impl LaneError for LockError {
    /// The same kind (so retryability is kept) and the same text.
    fn for_member(&self) -> Self {
        match self {
            Self::Unavailable(_) => Self::Unavailable(crate::error::chain(self).into()),
            Self::TimedOut { op, after } => Self::TimedOut { op, after: *after },
            Self::Config(problem) => Self::Config(problem.clone()),
        }
    }

    fn lane_stopped() -> Self {
        Self::Unavailable("the lock store's batching task has stopped".into())
    }

    fn miscounted(asked: usize, answered: usize) -> Self {
        Self::Unavailable(format!("a batch of {asked} lease calls got {answered} answers").into())
    }
}

#[async_trait]
impl LockStore for BatchingLocks {
    async fn try_acquire(
        &self,
        key: &PostingKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        self.acquires.ask((key.clone(), ttl)).await
    }

    async fn release(&self, lease: &Lease) -> Result<Release, LockError> {
        self.releases.ask(lease.clone()).await
    }

    async fn try_acquire_many(
        &self,
        keys: &[PostingKey],
        ttl: Duration,
    ) -> Result<Vec<Option<Lease>>, LockError> {
        self.inner.try_acquire_many(keys, ttl).await
    }

    async fn release_many(&self, leases: &[Lease]) -> Result<Vec<Release>, LockError> {
        self.inner.release_many(leases).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        self.inner.extend(lease, ttl).await
    }

    async fn holder(&self, key: &PostingKey) -> Result<Option<HolderInfo>, LockError> {
        self.inner.holder(key).await
    }

    async fn health(&self) -> Result<(), LockError> {
        self.inner.health().await
    }

    async fn admit(&self, marketplace: &str, rate: &Rate) -> Result<Admission, LockError> {
        self.inner.admit(marketplace, rate).await
    }
}
