//! Lease renewal while work runs, and the lost-lease signal the pipeline checks before bidding.
//!
//! [`Renewals::hold`] extends a lease every third of its TTL, in a task of its own started when the
//! first renewal falls due (see [`super::renewals`]: most leases are released before). The lease is
//! reported lost when the store says it is no longer ours, or when renewals have failed (or not
//! answered) for so long that the TTL may have run out — an unreachable store is never taken as
//! "still ours". A failed renewal is retried sooner than the regular period, so one lost packet
//! does not cost the lease. Dropping a `HeldLease` without [`release`](HeldLease::release) (an
//! error path, a panic, a cancelled task) stops renewal and releases the lease in the background.
//!
//! Every `HeldLease` counts in the `bidorch_leases_held` gauge from `hold` until it is released
//! or dropped, so the gauge is the number of leases this process holds (or is releasing).
//!
//! Time is `tokio::time::Instant` (the lease's std `acquired_at` converted), so a test that
//! pauses and advances the Tokio clock sees exactly what a process paused past its TTL would.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::renewals::{Renewals, Ticket, Waiting};
use super::{Lease, LockError, LockStore, Release};

/// A lease being renewed in the background.
pub struct HeldLease {
    store: Arc<dyn LockStore>,
    lease: Lease,
    /// `valid_until` of the lease, or `None` once it is known lost.
    state: watch::Receiver<Option<Instant>>,
    /// Its renewal, until released or dropped.
    renewal: Option<Ticket>,
    /// Dropped with the `HeldLease` (after `release` answered, or on drop): decrements the gauge.
    _held: crate::metrics::Counted,
}

impl Renewals {
    /// Holds `lease`: renewed every `ttl / 3` until released or dropped.
    pub fn hold(&self, store: Arc<dyn LockStore>, lease: Lease) -> HeldLease {
        let acquired_at = Instant::from_std(lease.acquired_at);
        let (tx, rx) = watch::channel(Some(acquired_at + lease.ttl));
        let renewal = self.enqueue(
            acquired_at + period(&lease),
            Waiting {
                store: store.clone(),
                lease: lease.clone(),
                state: tx,
            },
        );
        HeldLease {
            store,
            lease,
            state: rx,
            renewal: Some(renewal),
            _held: crate::metrics::Counted::new(crate::metrics::LEASES_HELD),
        }
    }
}

/// How often a lease is renewed.
fn period(lease: &Lease) -> Duration {
    (lease.ttl / 3).max(Duration::from_millis(10))
}

impl HeldLease {
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
        // An error means the renewal ended without signalling loss (released): never resolve.
        if rx.wait_for(Option::is_none).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stops renewal and releases the lease if it is still ours.
    pub async fn release(mut self) -> Result<Release, LockError> {
        if let Some(renewal) = self.renewal.take() {
            renewal.cancel();
        }
        self.store.release(&self.lease).await
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(renewal) = self.renewal.take() else {
            return; // released explicitly
        };
        renewal.cancel();
        let (store, lease) = (self.store.clone(), self.lease.clone());
        // Best effort: if no runtime is left, the TTL frees the key.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.release(&lease).await {
                    tracing::warn!(key = %lease.key, error = %crate::error::Chain(&e), "Releasing a dropped lease failed; it will expire by TTL");
                }
            });
        }
    }
}

/// Sends the loss signal, logging why once.
fn signal_lost(state: &watch::Sender<Option<Instant>>, lease: &Lease, why: &str) {
    tracing::warn!(key = %lease.key, why, "Lease lost");
    let _ = state.send(None);
}

/// The renewal loop of one lease, from its first renewal on.
pub(super) async fn renew(
    store: Arc<dyn LockStore>,
    lease: Lease,
    state: watch::Sender<Option<Instant>>,
) {
    let period = period(&lease);
    let retry = (period / 4).max(Duration::from_millis(5));
    // Until when the lease is certainly ours: the last successful grant or renewal plus TTL,
    // both measured from before the command was sent.
    let mut valid_until = Instant::from_std(lease.acquired_at) + lease.ttl;
    let mut next = Instant::from_std(lease.acquired_at) + period;
    loop {
        tokio::time::sleep_until(next.min(valid_until)).await;
        let attempt_at = Instant::now();
        if attempt_at >= valid_until {
            // Paused, starved or failing past the TTL: someone else may hold it now.
            signal_lost(&state, &lease, "not renewed within its TTL");
            return;
        }
        // An extend still pending when the TTL runs out cannot save the lease: stop waiting.
        match tokio::time::timeout_at(valid_until, store.extend(&lease, lease.ttl)).await {
            Err(_) => {
                signal_lost(&state, &lease, "renewal did not answer within the TTL");
                return;
            }
            Ok(Ok(true)) => {
                valid_until = attempt_at + lease.ttl;
                next = attempt_at + period;
                let _ = state.send(Some(valid_until));
            }
            Ok(Ok(false)) => {
                signal_lost(&state, &lease, "the key is no longer ours");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(key = %lease.key, error = %crate::error::Chain(&e), "Lease renewal failed; retrying");
                next = Instant::now() + retry;
            }
        }
    }
}
