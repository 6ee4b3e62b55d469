//! Lease renewal while work runs, and the lost-lease signal the pipeline checks before bidding.
//!
//! [`HeldLease::start`] spawns a task that extends the lease every third of its TTL. The lease is
//! reported lost when the store says it is no longer ours, or when renewals have failed for so
//! long that the TTL may have run out — an unreachable store is never taken as "still ours".
//! Dropping a `HeldLease` without [`release`](HeldLease::release) (an error path, a panic, a
//! cancelled task) stops renewal and releases the lease in the background.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Lease, LockError, LockStore, Release};

/// A lease being renewed in the background.
pub struct HeldLease {
    store: Arc<dyn LockStore>,
    lease: Lease,
    /// `valid_until` of the lease, or `None` once it is known lost.
    state: watch::Receiver<Option<Instant>>,
    renewer: Option<JoinHandle<()>>,
}

impl HeldLease {
    /// Starts renewing `lease` every `ttl / 3` until released or dropped.
    pub fn start(store: Arc<dyn LockStore>, lease: Lease) -> Self {
        let (tx, rx) = watch::channel(Some(lease.acquired_at + lease.ttl));
        let renewer = tokio::spawn(renew(store.clone(), lease.clone(), tx));
        Self {
            store,
            lease,
            state: rx,
            renewer: Some(renewer),
        }
    }

    /// The lease being held.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Whether the lease is (or may be) lost: check right before any irreversible step.
    /// Reads the clock too, so a holder paused past its TTL learns it on resuming, before the
    /// renewal task has had a chance to run.
    pub fn is_lost(&self) -> bool {
        match *self.state.borrow() {
            None => true,
            Some(valid_until) => Instant::now() >= valid_until,
        }
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        let mut rx = self.state.clone();
        // An error means the renewer ended without signalling loss (released): never resolve.
        if rx.wait_for(Option::is_none).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stops renewal and releases the lease if it is still ours.
    pub async fn release(mut self) -> Result<Release, LockError> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        self.store.release(&self.lease).await
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(renewer) = self.renewer.take() else {
            return; // released explicitly
        };
        renewer.abort();
        let (store, lease) = (self.store.clone(), self.lease.clone());
        // Best effort: if no runtime is left, the TTL frees the key.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.release(&lease).await {
                    tracing::warn!(key = %lease.key, error = %e, "Releasing a dropped lease failed; it will expire by TTL");
                }
            });
        }
    }
}

async fn renew(store: Arc<dyn LockStore>, lease: Lease, state: watch::Sender<Option<Instant>>) {
    let period = (lease.ttl / 3).max(Duration::from_millis(10));
    // Until when the lease is certainly ours: the last successful grant or renewal plus TTL.
    let mut valid_until = lease.acquired_at + lease.ttl;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let attempt_at = Instant::now();
        if attempt_at >= valid_until {
            // Paused (or starved) past the TTL: someone else may hold it now.
            tracing::warn!(key = %lease.key, "Lease expired before it could be renewed");
            let _ = state.send(None);
            return;
        }
        match store.extend(&lease, lease.ttl).await {
            Ok(true) => {
                valid_until = attempt_at + lease.ttl;
                let _ = state.send(Some(valid_until));
            }
            Ok(false) => {
                tracing::warn!(key = %lease.key, "Lease lost: the key is no longer ours");
                let _ = state.send(None);
                return;
            }
            Err(e) => {
                tracing::warn!(key = %lease.key, error = %e, "Lease renewal failed; retrying");
                if Instant::now() >= valid_until {
                    let _ = state.send(None);
                    return;
                }
            }
        }
    }
}
