//! One posting event through decide → lease → claim (the fence) → call → finish.
//!
//! Plain logic over the ports; it returns an [`Outcome`], and [`Outcome::action`] (in
//! `outcome/`) is the spec's outcome table, in one place. Each step either hands the next what
//! it needs or ends the attempt with an outcome (`ControlFlow`), one file each:
//!
//! 1. [`decide`](Pipeline::decide) (`decide.rs`): `ledger.lookup`, only for a posting this worker
//!    may have seen before (a redelivery, a retry, a wait): those mostly end here (a final row)
//!    without touching Redis. A first sight skips it: the claim answers the same questions in
//!    the round trip that claims. Then `policy.decide` — pure, before anything is claimed —
//!    unless a request was already sent: the stored request is the decision (sticky); a send
//!    whose lookup is not yet due waits here, unclaimed. Then the scoring service, if one is
//!    configured, and the marketplace's API writes the request (`request_for`).
//! 2. `lease.rs`: a marketplace that cannot be called is not worked on (no lease, no claim);
//!    `lease.acquire` — held elsewhere → look again after `worker.retry_lock_held`, ledger first.
//! 3. `claim.rs`: `ledger.claim`, one atomic step that bumps the epoch, reserves the cap slot,
//!    stores the request and counts the send — or records the skip. A request already sent
//!    comes back to be sent again byte for byte, with the posting's trace.
//! 4. `verify.rs`, when the claim says so (a send of unknown fate on an API without idempotency
//!    keys): no sooner than `lookup_delay` after that send, `lookup` of our bid — found, the
//!    posting is placed; not found, the stored request is claimed again and sent.
//! 5. `ready.rs`: right before the call (and the lookup), everything that must still hold — the
//!    marketplace may be called (the one permit check), the lease is ours, the fleet-wide rate
//!    admits the call. An operator's pause check belongs here too.
//! 6. `call.rs`: `bid`, the stored request sent in the posting's trace, its answer classified;
//!    on an API without idempotency keys a refusal is looked up first (it may be "you already
//!    bid" after an answer was lost).
//! 7. `finish.rs`: `ledger.finish` under the epoch — a superseded holder writes nothing.
//! 8. The lease goes back to the caller ([`Processed`]), which releases it while the message is
//!    settled: the ledger has the outcome by then, so the lease only keeps duplicates waiting.
//!
//! Tracing: the `pipeline` span (with `marketplace`, `posting_id`, `outcome`) has one child per
//! step — `ledger.lookup`, `policy.decide`, `scoring`, `lease.acquire`, `ledger.claim`,
//! `rate.admit`, `lookup`, `bid`, `ledger.finish`, `lease.release` — each with a bounded `result`. Span
//! names carry no ids.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, debug_span, field::Empty};

use crate::flow::{Breakers, ProbeGuard};
use crate::ledger::{BidLedger, Intent, Pending};
use crate::lock::{HeldLease, LockStore, Rate, RateLimiter, Release, Renewals};
use crate::marketplace::Marketplace;
use crate::policy::Policy;
use crate::posting::{Posting, PostingKey};

#[macro_use]
mod span;

mod assemble;
mod call;
mod claim;
mod decide;
mod finish;
mod lease;
mod outcome;
mod ready;
mod verify;

pub use self::decide::Scoring;
pub use self::outcome::{Action, Component, Envelope, Outcome, PlacedVia, RetryRules};

/// What running a posting left: its outcome, and the lease still to be released.
///
/// The worker settles the message and releases the lease side by side: once the ledger has the
/// outcome the lease protects nothing (any later claim finds the row), it only keeps duplicate
/// copies waiting; so neither waits for the other (an ack may wait to go out with others).
pub struct Processed {
    /// The outcome (the ledger already has it).
    pub outcome: Outcome,
    lease: Option<HeldLease>,
}

impl Processed {
    /// An outcome reached without taking a lease.
    pub fn without_lease(outcome: Outcome) -> Self {
        Self {
            outcome,
            lease: None,
        }
    }

    /// Releases the lease, if one is held, in its `lease.release` span; the outcome stands
    /// whatever Redis answers (the TTL frees a lease whose release failed).
    pub async fn release(self) -> Outcome {
        if let Some(held) = self.lease {
            let released = step!(
                "lease.release",
                held.release(),
                |r: &Result<_, _>| match r {
                    Ok(Release::Released) => "released",
                    Ok(Release::NotOwned) => "not_owned",
                    Err(_) => "error",
                }
            );
            if let Err(e) = released {
                tracing::warn!(error = %crate::error::Chain(&e), "Lease release failed; it will expire by TTL");
            }
        }
        self.outcome
    }
}

/// Who runs the pipeline and in which trace: recorded with each attempt.
#[derive(Clone, Debug, Default)]
pub struct AttemptContext {
    /// The event that carried the posting.
    pub event_id: String,
    /// The trace this attempt runs in, if known.
    pub trace_id: Option<String>,
    /// This attempt's W3C `traceparent` (its `process` span's context): kept as the posting's
    /// trace when this attempt is its first.
    pub trace_parent: Option<String>,
    /// The delivery's own `traceparent`/`tracestate`, passed on as they came when the posting's
    /// trace is this attempt's and tracing export is off.
    pub trace_headers: BTreeMap<String, String>,
    /// Whether the posting may have been worked on before (a redelivery, a retry, a wait): the
    /// ledger is then read before the lease is taken.
    pub seen_before: bool,
}

/// The bid pipeline over its ports. Cheap to share: wrap in an `Arc`.
pub struct Pipeline {
    ledger: Arc<dyn BidLedger>,
    locks: Arc<dyn LockStore>,
    /// Renews the leases this pipeline holds.
    renewals: Renewals,
    marketplace: Arc<dyn Marketplace>,
    policy: Policy,
    lease_ttl: Duration,
    /// When a posting whose lease another worker holds is looked at again
    /// (`worker.retry_lock_held`).
    recheck: Duration,
    /// This worker's id, written with each attempt.
    instance: String,
    /// Per-marketplace pauses; shared by every task of this pipeline.
    breakers: Breakers,
    /// Fleet-wide request rates, by marketplace, and the buckets that keep them.
    rates: BTreeMap<String, Rate>,
    limiter: Option<Arc<dyn RateLimiter>>,
    /// The remote scoring service, if configured.
    scoring: Option<Scoring>,
    /// The fleet-wide manual pauses, if this pipeline honours them (every system's does).
    board: Option<crate::control::PauseBoard>,
}

/// A step's verdict: go on with `T`, or end the attempt with this outcome.
type Step<T> = ControlFlow<Outcome, T>;

/// The value a step goes on with, or the outcome it ends the attempt with.
macro_rules! go_on {
    ($step:expr) => {
        match $step {
            ControlFlow::Continue(value) => value,
            ControlFlow::Break(outcome) => return outcome.into(),
        }
    };
}

impl From<Outcome> for Processed {
    fn from(outcome: Outcome) -> Self {
        Self::without_lease(outcome)
    }
}

impl Pipeline {
    /// Runs one validated posting through the pipeline, lease released before it returns.
    pub async fn process(&self, posting: &Posting, context: &AttemptContext) -> Outcome {
        self.run(posting, context).await.release().await
    }

    /// Runs one validated posting through the pipeline, in its `pipeline` span, and hands back
    /// the lease for the caller to release once it has settled the message.
    pub async fn run(&self, posting: &Posting, context: &AttemptContext) -> Processed {
        let span = debug_span!(
            "pipeline",
            marketplace = posting.key.marketplace(),
            posting_id = posting.key.posting_id(),
            outcome = Empty
        );
        let processed = async {
            let intent = go_on!(self.decide(posting, context).await);
            self.attempt(&posting.key, intent, posting.bid_cost, context)
                .await
        }
        .instrument(span.clone())
        .await;
        span.record("outcome", processed.outcome.label());
        processed
    }

    /// Settles a posting whose request was sent but never recorded (`bidorch reconcile`): the
    /// same lease, claim and fence as a worker, re-sending only the stored request.
    pub async fn reconcile(&self, key: &PostingKey, context: &AttemptContext) -> Outcome {
        let span = debug_span!(
            "reconcile",
            marketplace = key.marketplace(),
            posting_id = key.posting_id(),
            outcome = Empty
        );
        let outcome = self
            .attempt(key, Intent::Resend, None, context)
            .instrument(span.clone())
            .await
            .release()
            .await;
        span.record("outcome", outcome.label());
        outcome
    }

    /// Lease → claim → ready → call → finish, for a decided intent; the lease handed back held.
    async fn attempt(
        &self,
        key: &PostingKey,
        intent: Intent,
        bid_cost: Option<rust_decimal::Decimal>,
        context: &AttemptContext,
    ) -> Processed {
        let (held, probe) = go_on!(self.lease(key, &intent).await);
        let outcome = self
            .under_lease(key, intent, bid_cost, context, &held, probe)
            .await;
        Processed {
            outcome,
            lease: Some(held),
        }
    }

    /// The steps that run while `held` is ours.
    async fn under_lease(
        &self,
        key: &PostingKey,
        intent: Intent,
        bid_cost: Option<rust_decimal::Decimal>,
        context: &AttemptContext,
        held: &HeldLease,
        probe: Option<ProbeGuard>,
    ) -> Outcome {
        let mut claimed = go_on!(self.claim(key, intent, bid_cost, context).await);
        let mut probe = probe;
        if let Some(sent_at) = claimed.verify {
            if let Some(retry_in) = self.lookup_due_in(key.marketplace(), sent_at) {
                return self
                    .finish_uncalled(
                        key,
                        claimed.epoch,
                        Pending::LookupWait,
                        Outcome::LookupWait { retry_in },
                    )
                    .await;
            }
            let probe_now = go_on!(self.ready(key, &claimed, held, probe).await);
            claimed = go_on!(self.verify(key, &claimed, probe_now, context).await);
            probe = None;
        }
        let probe = go_on!(self.ready(key, &claimed, held, probe).await);
        let (finish, outcome) = self.call(key, &claimed, probe, context).await;
        self.finish_called(key, claimed.epoch, finish, outcome)
            .await
    }
}
