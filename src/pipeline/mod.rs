//! One posting event through decide → lease → claim (the fence) → bid → finish.
//!
//! Plain logic over the ports; it returns an [`Outcome`], and [`Outcome::action`] (in
//! `outcome.rs`) is the spec's outcome table, in one place.
//!
//! The steps, and why in this order:
//! 1. `ledger.lookup`, only for a posting this worker may have seen before (a redelivery, a
//!    retry, a wait): those mostly end here (final row) without touching Redis, or are sticky.
//!    A first sight skips it: the claim answers the same questions (a final row, a request
//!    already sent) in the same round trip that claims, so a lookup would be a round trip of its
//!    own for nothing in the common case.
//! 2. `policy.decide` — pure, before anything is claimed — unless a request was already sent:
//!    then the stored request is the decision (sticky), whatever the policy says today (the
//!    claim hands it back even when this attempt decided otherwise).
//! 3. A paused marketplace is not called: its postings wait, no lease taken, nothing claimed.
//! 4. `lease.acquire`: held elsewhere → look again after `worker.retry_lock_held`, ledger first.
//! 5. `ledger.claim`: one atomic step that bumps the epoch, reserves the cap slot, stores the
//!    request and counts the send — or records the skip. A request already sent comes back from
//!    it to be sent again byte for byte.
//! 6. The lease must still be ours, the marketplace's fleet-wide rate must admit the call
//!    (`rate.admit`; over it → wait, the row stays pending), then `bid` (`request.rs`/`call.rs`).
//! 7. `ledger.finish` under the epoch: a superseded holder writes nothing.
//! 8. The lease goes back to the caller ([`Processed`]), which releases it once the message is
//!    settled: the ledger has the outcome by then, so the lease only keeps duplicates waiting.
//!
//! Tracing: the `pipeline` span (with `marketplace`, `posting_id`, `outcome`) has one child per
//! step — `ledger.lookup`, `policy.decide`, `lease.acquire`, `ledger.claim`, `bid`,
//! `ledger.finish`, `lease.release` — each with a bounded `result`. Span names carry no ids.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{Instrument, debug_span, field::Empty};

use crate::flow::{Breakers, Permit, ProbeGuard};
use crate::ledger::{BidLedger, Claim, ClaimRequest, Fenced, Finish, Intent};
use crate::lock::{Admission, HeldLease, LockStore, Rate, RateLimiter, Release};
use crate::marketplace::Marketplace;
use crate::policy::{Decision, Policy};
use crate::posting::{Posting, PostingKey};

mod assemble;
mod call;
mod outcome;
mod request;
mod scoring;
mod steps;

use self::steps::{fence_result, ledger_down, lock_store_down, lookup_result, pending};

use self::call::PostingTrace;
pub use self::outcome::{Action, Component, Envelope, Outcome, PlacedVia, RetryRules};
pub use self::request::stored_request;
pub use self::scoring::Scoring;

/// Runs `$fut` inside a span `$name` and records `result = $label(&output)` on it: every
/// pipeline step's span, with a bounded `result`, made the same way. Step spans are DEBUG: traces
/// take them (see [`crate::telemetry`]), INFO logs do not, so without tracing export they cost
/// nothing.
macro_rules! step {
    ($name:literal, $fut:expr, $label:expr) => {{
        let span = debug_span!($name, result = Empty);
        let output = $fut.instrument(span.clone()).await;
        span.record("result", ($label)(&output));
        output
    }};
}

/// What running a posting left: its outcome, and the lease still to be released.
///
/// The worker settles the message first and releases the lease after: once the ledger has the
/// outcome the lease protects nothing (any later claim finds the row), it only keeps duplicate
/// copies waiting, so the posting's delivery need not wait for Redis to answer the release.
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
        let processed = self.steps(posting, context).instrument(span.clone()).await;
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
            .under_permit(key, Intent::Resend, context)
            .instrument(span.clone())
            .await
            .release()
            .await;
        span.record("outcome", outcome.label());
        outcome
    }

    async fn steps(&self, posting: &Posting, context: &AttemptContext) -> Processed {
        let key = &posting.key;
        let entry = if context.seen_before {
            match step!("ledger.lookup", self.ledger.lookup(key), lookup_result) {
                Err(e) => return Processed::without_lease(ledger_down(&e)),
                Ok(Some(entry)) if entry.state.is_final() => {
                    return Processed::without_lease(Outcome::Duplicate(entry.state));
                }
                Ok(entry) => entry,
            }
        } else {
            None
        };
        // Sticky: once a request may have reached the marketplace, it is the decision.
        let intent = match entry {
            Some(entry) if entry.sends > 0 => Intent::Resend,
            _ => self.decide(posting),
        };
        let intent = match (intent, &self.scoring) {
            (Intent::Bid(request), Some(scoring)) => match self.score(posting, scoring).await {
                Ok(None) => Intent::Bid(request),
                Ok(Some(reason)) => Intent::Skip(vec![reason]),
                Err(outcome) => return Processed::without_lease(outcome),
            },
            (intent, _) => intent,
        };
        self.under_permit(key, intent, context).await
    }

    /// The policy's decision as an intent, in its `policy.decide` span.
    fn decide(&self, posting: &Posting) -> Intent {
        let span = debug_span!("policy.decide", decision = Empty, reasons = Empty);
        let decision = span.in_scope(|| self.policy.decide(posting, chrono::Utc::now()));
        match decision {
            Decision::Skip(reasons) => {
                span.record("decision", "skip");
                // The bounded codes (the ledger keeps the details).
                let codes: Vec<&str> = reasons.iter().map(|r| r.code()).collect();
                span.record("reasons", codes.join(",").as_str());
                Intent::Skip(reasons.iter().map(|r| r.describe()).collect())
            }
            Decision::Bid {
                amount,
                currency,
                cover_letter,
            } => {
                span.record("decision", "bid");
                Intent::Bid(stored_request(
                    &posting.key,
                    amount,
                    &currency,
                    &cover_letter,
                ))
            }
        }
    }

    /// Checks the marketplace may be called (when the intent needs it), then takes the lease
    /// (handed back held, for the caller to release).
    async fn under_permit(
        &self,
        key: &PostingKey,
        intent: Intent,
        context: &AttemptContext,
    ) -> Processed {
        let probe = if matches!(intent, Intent::Skip(_)) {
            None
        } else {
            match self.breakers.permit(key.marketplace(), Instant::now()) {
                Permit::Go => None,
                Permit::Probe(guard) => Some(guard),
                Permit::Wait { retry_in, reason } => {
                    return Processed::without_lease(Outcome::MarketplacePaused {
                        reason,
                        retry_in,
                    });
                }
            }
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
        let held = match acquired {
            Err(e) => return Processed::without_lease(lock_store_down(&e)),
            Ok(None) => return Processed::without_lease(self.lock_held()),
            Ok(Some(lease)) => HeldLease::start(self.locks.clone(), lease),
        };
        let outcome = self.under_lease(key, intent, context, &held, probe).await;
        Processed {
            outcome,
            lease: Some(held),
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

    /// Claim, then (if the claim says send) the fence and the call, while `held` is ours.
    async fn under_lease(
        &self,
        key: &PostingKey,
        intent: Intent,
        context: &AttemptContext,
        held: &HeldLease,
        mut probe: Option<ProbeGuard>,
    ) -> Outcome {
        let request = ClaimRequest {
            key: key.clone(),
            event_id: context.event_id.clone(),
            intent,
            instance: self.instance.clone(),
            trace_id: context.trace_id.clone(),
            trace_parent: context.trace_parent.clone(),
            daily_cap: self.policy.daily_cap(key.marketplace()),
            day: chrono::Utc::now().date_naive(),
        };
        let claimed = step!("ledger.claim", self.ledger.claim(&request), |r: &Result<
            Claim,
            _,
        >| match r {
            Err(_) => "error",
            Ok(Claim::Final(_)) => "final",
            Ok(Claim::Send { resend: false, .. }) => "send",
            Ok(Claim::Send { resend: true, .. }) => "resend",
            Ok(Claim::Skipped { capped: false, .. }) => "skipped",
            Ok(Claim::Skipped { capped: true, .. }) => "capped",
            Ok(Claim::Nothing) => "nothing",
        });
        let (epoch, stored, posting_trace) = match claimed {
            Err(e) => return ledger_down(&e),
            Ok(Claim::Final(entry)) => return Outcome::Duplicate(entry.state),
            Ok(Claim::Nothing) => return Outcome::Duplicate(crate::ledger::LedgerState::Pending),
            Ok(Claim::Skipped { reasons, .. }) => return Outcome::Skipped { reasons },
            Ok(Claim::Send {
                epoch,
                request,
                trace_parent,
                ..
            }) => (epoch, request, trace_parent),
        };
        // The claim may hand back a request sent by an earlier attempt although this one meant
        // to skip: it is sent again, so the marketplace must be callable now.
        if matches!(request.intent, Intent::Skip(_)) {
            match self.breakers.permit(key.marketplace(), Instant::now()) {
                Permit::Go => {}
                Permit::Probe(guard) => probe = Some(guard),
                Permit::Wait { retry_in, reason } => {
                    let finish = pending("marketplace_paused", None);
                    return self
                        .finish_or(
                            key,
                            epoch,
                            finish,
                            Outcome::MarketplacePaused { reason, retry_in },
                        )
                        .await;
                }
            }
        }
        // The lease must still be ours right before the call (a holder paused past its TTL
        // learns it here, from its own clock).
        if held.is_lost() {
            return self
                .finish_or(key, epoch, pending("lease_lost", None), Outcome::LeaseLost)
                .await;
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
                    let finish = pending("lock_store_unavailable", None);
                    return self
                        .finish_or(key, epoch, finish, lock_store_down(&e))
                        .await;
                }
                Ok(Admission::Wait(retry_in)) => {
                    let finish = pending("rate_limited", None);
                    return self
                        .finish_or(key, epoch, finish, Outcome::RateLimited { retry_in })
                        .await;
                }
                Ok(Admission::Go) => {}
            }
        }
        let trace = PostingTrace {
            parent: posting_trace.as_deref(),
            attempt: context,
        };
        let (finish, done) = self.call(key, &stored, probe, trace).await;
        let written = step!(
            "ledger.finish",
            self.ledger.finish(key, epoch, finish),
            fence_result
        );
        match written {
            Err(e) => ledger_down(&e),
            Ok(Fenced::Written) => done,
            Ok(Fenced::Final(entry)) => {
                call::report_mismatch(key, &done, entry.state);
                Outcome::Duplicate(entry.state)
            }
            Ok(Fenced::Superseded { .. }) => Outcome::Superseded,
        }
    }

    /// Ends the attempt as `finish` without having called; `outcome` unless the ledger says
    /// otherwise.
    async fn finish_or(
        &self,
        key: &PostingKey,
        epoch: i64,
        finish: Finish,
        outcome: Outcome,
    ) -> Outcome {
        match step!(
            "ledger.finish",
            self.ledger.finish(key, epoch, finish),
            fence_result
        ) {
            Err(e) => ledger_down(&e),
            Ok(Fenced::Final(entry)) => Outcome::Duplicate(entry.state),
            Ok(Fenced::Written | Fenced::Superseded { .. }) => outcome,
        }
    }
}
