//! The lease: taken only for a posting whose marketplace may be called (or that only needs a
//! skip recorded), and a posting whose lease another worker holds is looked at again soon.

use std::ops::ControlFlow;

use super::{Component, Outcome, Pipeline, Step};
use crate::flow::ProbeGuard;
use crate::ledger::Intent;
use crate::lock::HeldLease;
use crate::posting::PostingKey;

impl Pipeline {
    /// The lease of `key`, renewed until released, and the breaker's probe slot when this
    /// attempt is the one to probe a paused marketplace. An intent that will call the
    /// marketplace does not even take the lease while it is paused.
    pub(super) async fn lease(
        &self,
        key: &PostingKey,
        intent: &Intent,
    ) -> Step<(HeldLease, Option<ProbeGuard>)> {
        let probe = match intent {
            Intent::Skip(_) => None,
            Intent::Bid(_) | Intent::Resend => self.permit(key.marketplace())?,
        };
        let acquired = step!(
            "lease.acquire",
            self.locks.try_acquire(key, self.lease_ttl),
            |r: &Result<Option<_>, _>| match r {
                Err(_) => "error",
                Ok(None) => "held_elsewhere",
                Ok(Some(_)) => "acquired",
            }
        );
        match acquired {
            Err(e) => ControlFlow::Break(Outcome::unavailable(Component::LockStore, &e)),
            Ok(None) => ControlFlow::Break(self.lock_held()),
            Ok(Some(lease)) => {
                ControlFlow::Continue((self.renewals.hold(self.locks.clone(), lease), probe))
            }
        }
    }

    /// Another worker holds the lease: look again after `recheck` plus jitter (so that waiting
    /// copies do not all come back at once), not after the holder's whole remaining lease — the
    /// holder is usually done in milliseconds, and the recheck reads the ledger first, so a
    /// duplicate of a posting finished meanwhile is acked at once.
    fn lock_held(&self) -> Outcome {
        let jitter = (self.recheck / 4).mul_f64(fastrand::f64());
        Outcome::LockHeld {
            retry_in: self.recheck.saturating_add(jitter),
        }
    }
}
