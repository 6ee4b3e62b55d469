//! Right before the call, everything that must still hold: the marketplace may be called, the
//! lease is ours, the fleet-wide rate admits the call. A claim has been made by then, so a
//! failed check ends the attempt pending (`finish.rs`) with the reason kept in its history.
//!
//! This is the place for each check that must see the moment of the call, a lookup's as much as
//! a send's: an operator's pause of the marketplace belongs here too.

use std::ops::ControlFlow;
use std::time::Instant;

use super::claim::Claimed;
use super::{Component, Outcome, Pipeline, Step};
use crate::flow::{PauseReason, Permit, ProbeGuard};
use crate::ledger::Pending;
use crate::lock::{Admission, HeldLease};
use crate::posting::PostingKey;

impl Pipeline {
    /// Whether `marketplace` may be called now: not while an operator paused it; else go, go
    /// as the probe of a paused marketplace (its slot held until the answer is recorded), or
    /// wait for its pause to end.
    pub(super) fn permit(&self, marketplace: &str) -> Step<Option<ProbeGuard>> {
        self.by_hand(marketplace)?;
        match self.breakers.permit(marketplace, Instant::now()) {
            Permit::Go => ControlFlow::Continue(None),
            Permit::Probe(guard) => ControlFlow::Continue(Some(guard)),
            Permit::Wait { retry_in, reason } => {
                ControlFlow::Break(Outcome::MarketplacePaused { reason, retry_in })
            }
        }
    }

    /// Checks, right before the call, that `claimed` may go out: `probe` is the permit taken
    /// before the lease, if the attempt meant to call. A broken check ends the attempt pending
    /// (recorded, with why) and gives the outcome.
    pub(super) async fn ready(
        &self,
        key: &PostingKey,
        claimed: &Claimed,
        held: &HeldLease,
        probe: Option<ProbeGuard>,
    ) -> Step<Option<ProbeGuard>> {
        match self.checks(key, claimed, held, probe).await {
            ControlFlow::Continue(probe) => ControlFlow::Continue(probe),
            ControlFlow::Break((pending, outcome)) => ControlFlow::Break(
                self.finish_uncalled(key, claimed.epoch, pending, outcome)
                    .await,
            ),
        }
    }

    /// Whether an operator holds `marketplace` back: checked before the lease and again right
    /// before every call (a pause applies to calls already on their way).
    fn by_hand(&self, marketplace: &str) -> Step<()> {
        match self.board.as_ref().and_then(|b| b.check(marketplace)) {
            None => ControlFlow::Continue(()),
            Some(held) => {
                tracing::debug!(marketplace, reason = %held.reason, "Held back by hand");
                ControlFlow::Break(Outcome::MarketplacePaused {
                    reason: PauseReason::Manual,
                    retry_in: held.retry_in,
                })
            }
        }
    }

    /// The checks of [`ready`](Self::ready): a manual pause, the permit still to take (if any),
    /// the lease, the rate; a broken one says why the attempt ends pending and with what
    /// outcome.
    async fn checks(
        &self,
        key: &PostingKey,
        claimed: &Claimed,
        held: &HeldLease,
        probe: Option<ProbeGuard>,
    ) -> ControlFlow<(Pending, Outcome), Option<ProbeGuard>> {
        if let ControlFlow::Break(outcome) = self.by_hand(key.marketplace()) {
            return ControlFlow::Break((Pending::MarketplacePaused, outcome));
        }
        // A request an earlier attempt sent came back although this one meant to skip: it is sent
        // again, so the marketplace must be callable now (the only permit this attempt takes).
        let probe = if claimed.permitted {
            probe
        } else {
            match self.permit(key.marketplace()) {
                ControlFlow::Continue(probe) => probe,
                ControlFlow::Break(outcome) => {
                    return ControlFlow::Break((Pending::MarketplacePaused, outcome));
                }
            }
        };
        // A holder paused past its TTL learns it here, from its own clock.
        if held.is_lost() {
            return ControlFlow::Break((Pending::LeaseLost, Outcome::LeaseLost));
        }
        // Admitted right before the call, so the marketplace sees the bucket's spacing (an
        // earlier admission would let ledger stalls bunch the calls up).
        if let (Some(rate), Some(limiter)) = (self.rates.get(key.marketplace()), &self.limiter) {
            let admitted = step!(
                "rate.admit",
                limiter.admit(key.marketplace(), rate),
                |r: &Result<Admission, _>| match r {
                    Err(_) => "error",
                    Ok(Admission::Go) => "go",
                    Ok(Admission::Wait(_)) => "wait",
                }
            );
            match admitted {
                Err(e) => {
                    let outcome = Outcome::unavailable(Component::LockStore, &e);
                    return ControlFlow::Break((Pending::LockStoreUnavailable, outcome));
                }
                Ok(Admission::Wait(retry_in)) => {
                    return ControlFlow::Break((
                        Pending::OverRate,
                        Outcome::RateLimited { retry_in },
                    ));
                }
                Ok(Admission::Go) => {}
            }
        }
        ControlFlow::Continue(probe)
    }
}
