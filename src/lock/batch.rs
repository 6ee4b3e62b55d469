//! [`BatchingLocks`]: the lease calls of concurrent postings gathered into one round trip each
//! (a [`Lane`] for acquisitions, one for releases), over a store whose batch calls are real
//! pipelines (a single Redis node). Every member gets its own answer; a failed batch fails each
//! member, so a posting never takes "could not ask" for "held elsewhere".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{HolderInfo, Lease, LeaseBatches, LockError, LockStore, Release};
use crate::lane::{Lane, LaneConfig, LaneFailure};
use crate::posting::PostingKey;

/// How the lease lanes batch: a worker's prefetch in one pipeline, two pipelines on the wire at
/// once (one acquiring while the last answers), and a lone call waiting at most a millisecond.
/// Redis answers a pipeline of a hundred `SET NX` in about the time of one, so the batch is
/// bounded by the prefetch rather than by the server.
pub const LANE: LaneConfig = LaneConfig {
    name: "leases",
    max_batch: 256,
    in_flight: 2,
    linger: Duration::from_millis(1),
};

/// A lock store whose single acquisitions and releases are batched; the rest go straight
/// through.
pub struct BatchingLocks {
    inner: Arc<dyn LeaseBatches>,
    acquires: Lane<(PostingKey, Duration), Option<Lease>, LockError>,
    releases: Lane<Lease, Release, LockError>,
}

impl BatchingLocks {
    /// Wraps `inner`. Must be called inside a tokio runtime (it starts the lanes' tasks).
    pub fn new(inner: Arc<dyn LeaseBatches>) -> Self {
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
    store: &dyn LeaseBatches,
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

/// A lane's failure as the lock store's error: a shared batch error keeps its kind (so its
/// retryability), and a lane that stopped or miscounted fails closed, as unavailable — never as
/// "held elsewhere".
fn lock_error(failure: LaneFailure<LockError>) -> LockError {
    match failure {
        LaneFailure::Batch { error, .. } => match error.as_ref() {
            LockError::TimedOut { op, after } => LockError::TimedOut { op, after: *after },
            LockError::Config(problem) => LockError::Config(problem.clone()),
            LockError::Unavailable(_) => LockError::Unavailable(Box::new(LaneFailure::Batch {
                size: 0,
                error: error.clone(),
            })),
        },
        other => LockError::Unavailable(Box::new(other)),
    }
}

#[async_trait]
impl LockStore for BatchingLocks {
    async fn try_acquire(
        &self,
        key: &PostingKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        self.acquires
            .ask((key.clone(), ttl))
            .await
            .map_err(lock_error)
    }

    async fn release(&self, lease: &Lease) -> Result<Release, LockError> {
        self.releases.ask(lease.clone()).await.map_err(lock_error)
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
}
