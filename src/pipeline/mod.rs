//! One posting event through ledger → decide → lease → claim (the fence) → bid → finish.
//!
//! Plain logic over the ports; it returns an [`Outcome`], and [`Outcome::action`] (in
//! `outcome.rs`) is the spec's outcome table, in one place.
//!
//! The steps, and why in this order:
//! 1. `ledger.lookup`: most duplicates end here (final row), without touching Redis.
//! 2. `policy.decide` — pure, before anything is claimed — unless a request was already sent:
//!    then the stored request is the decision (sticky), whatever the policy says today.
//! 3. A paused marketplace is not called: its postings wait, no lease taken, nothing claimed.
//! 4. `rate.admit` (when the marketplace has a fleet-wide rate): over it → wait, no call.
//!    Then `lease.acquire`: held elsewhere → wait for the holder's lease.
//! 5. `ledger.claim`: one atomic step that bumps the epoch, reserves the cap slot, stores the
//!    request and counts the send — or records the skip. A request already sent comes back from
//!    it to be sent again byte for byte.
//! 6. The lease must still be ours, then `bid` (the marketplace call, `request.rs`/`call.rs`).
//! 7. `ledger.finish` under the epoch: a superseded holder writes nothing.
//!
//! Tracing: the `pipeline` span (with `marketplace`, `posting_id`, `outcome`) has one child per
//! step — `ledger.lookup`, `policy.decide`, `lease.acquire`, `ledger.claim`, `bid`,
//! `ledger.finish`, `lease.release` — each with a bounded `result`. Span names carry no ids.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{Instrument, field::Empty, info_span};

use crate::config::OnScoringFailure;
use crate::flow::{Breakers, Dependency, Permit, ProbeGuard};
use crate::ledger::{
    BidLedger, Claim, ClaimRequest, Fenced, Finish, Intent, LedgerEntry, LedgerError,
};
use crate::lock::{Admission, HeldLease, LockError, LockStore, Rate, Release};
use crate::marketplace::Marketplace;
use crate::policy::{Decision, Policy};
use crate::posting::{Posting, PostingKey};
use crate::scoring::Scorer;

mod call;
mod outcome;
mod request;

pub use self::call::MISMATCHES;
pub use self::outcome::{Action, Component, Envelope, Outcome, PlacedVia, RetryRules};
pub use self::request::stored_request;

/// Runs `$fut` inside an INFO span `$name` and records `result = $label(&output)` on it: every
/// pipeline step's span, with a bounded `result`, made the same way.
macro_rules! step {
    ($name:literal, $fut:expr, $label:expr) => {{
        let span = info_span!($name, result = Empty);
        let output = $fut.instrument(span.clone()).await;
        span.record("result", ($label)(&output));
        output
    }};
}

fn ledger_down(e: &LedgerError) -> Outcome {
    Outcome::Unavailable {
        component: Component::Ledger,
        error: crate::error::chain(e),
    }
}

fn lock_store_down(e: &LockError) -> Outcome {
    Outcome::Unavailable {
        component: Component::LockStore,
        error: crate::error::chain(e),
    }
}

/// Who runs the pipeline and in which trace: recorded with each attempt.
#[derive(Clone, Debug, Default)]
pub struct AttemptContext {
    /// The event that carried the posting.
    pub event_id: String,
    /// The trace this attempt runs in, if known.
    pub trace_id: Option<String>,
}

/// The bid pipeline over its ports. Cheap to share: wrap in an `Arc`.
pub struct Pipeline {
    ledger: Arc<dyn BidLedger>,
    locks: Arc<dyn LockStore>,
    marketplace: Arc<dyn Marketplace>,
    policy: Policy,
    lease_ttl: Duration,
    /// This worker's id, written with each attempt.
    instance: String,
    /// Per-marketplace pauses; shared by every task of this pipeline.
    breakers: Breakers,
    /// Fleet-wide request rates, by marketplace (kept in the lock store).
    rates: BTreeMap<String, Rate>,
    /// The remote scoring service, if configured.
    scoring: Option<Scoring>,
}

/// The scoring service and what to make of its answers.
pub struct Scoring {
    pub scorer: Arc<dyn Scorer>,
    pub threshold: f64,
    pub on_failure: OnScoringFailure,
}

impl Pipeline {
    /// Assembles a pipeline.
    pub fn new(
        ledger: Arc<dyn BidLedger>,
        locks: Arc<dyn LockStore>,
        marketplace: Arc<dyn Marketplace>,
        policy: Policy,
        lease_ttl: Duration,
    ) -> Self {
        Self {
            ledger,
            locks,
            marketplace,
            policy,
            lease_ttl,
            instance: "bidorch".to_owned(),
            breakers: Breakers::new(crate::flow::BreakerSettings::default()),
            rates: BTreeMap::new(),
            scoring: None,
        }
    }

    /// Asks `scoring` about every posting the rules would bid on.
    pub fn with_scoring(mut self, scoring: Scoring) -> Self {
        self.scoring = Some(scoring);
        self
    }

    /// Limits the request rate of these marketplaces, fleet-wide.
    pub fn with_rates(mut self, rates: BTreeMap<String, Rate>) -> Self {
        self.rates = rates;
        self
    }

    /// Names this worker in the attempt history.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// Uses these marketplace breakers (their settings; the state starts closed).
    pub fn with_breakers(mut self, breakers: Breakers) -> Self {
        self.breakers = breakers;
        self
    }

    /// The marketplace breakers (for `/readyz`).
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// The ledger (for the unresolved-sends gauge).
    pub fn ledger(&self) -> &Arc<dyn BidLedger> {
        &self.ledger
    }

    /// Asks `dependency` whether it answers again (the worker's probe while paused).
    pub async fn probe(&self, dependency: Dependency) -> Result<(), String> {
        match dependency {
            Dependency::LockStore => self
                .locks
                .health()
                .await
                .map_err(|e| crate::error::chain(&e)),
            Dependency::Ledger => self
                .ledger
                .health()
                .await
                .map_err(|e| crate::error::chain(&e)),
        }
    }

    /// Parses an event body: a posting of a marketplace this deployment bids on, or poison.
    pub fn parse(&self, body: &[u8]) -> Result<Posting, crate::posting::PostingError> {
        Posting::parse(body, |m| self.marketplace.knows(m))
    }

    /// Runs one validated posting through the pipeline.
    #[tracing::instrument(name = "pipeline", skip_all, fields(marketplace = posting.key.marketplace(), posting_id = posting.key.posting_id(), outcome = Empty))]
    pub async fn process(
        &self,
        posting: &Posting,
        context: &AttemptContext,
        trace_headers: &BTreeMap<String, String>,
    ) -> Outcome {
        let outcome = self.steps(posting, context, trace_headers).await;
        tracing::Span::current().record("outcome", outcome.label());
        outcome
    }

    /// Settles a posting whose request was sent but never recorded (`bidorch reconcile`): the
    /// same lease, claim and fence as a worker, re-sending only the stored request.
    #[tracing::instrument(name = "reconcile", skip_all, fields(marketplace = key.marketplace(), posting_id = key.posting_id(), outcome = Empty))]
    pub async fn reconcile(&self, key: &PostingKey, context: &AttemptContext) -> Outcome {
        let outcome = self
            .under_permit(key, Intent::Resend, context, &BTreeMap::new())
            .await;
        tracing::Span::current().record("outcome", outcome.label());
        outcome
    }

    async fn steps(
        &self,
        posting: &Posting,
        context: &AttemptContext,
        trace_headers: &BTreeMap<String, String>,
    ) -> Outcome {
        let key = &posting.key;
        let found = step!("ledger.lookup", self.ledger.lookup(key), lookup_result);
        let entry = match found {
            Err(e) => return ledger_down(&e),
            Ok(Some(entry)) if entry.state.is_final() => return Outcome::Duplicate(entry.state),
            Ok(entry) => entry,
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
                Err(outcome) => return outcome,
            },
            (intent, _) => intent,
        };
        self.under_permit(key, intent, context, trace_headers).await
    }

    /// The policy's decision as an intent, in its `policy.decide` span.
    fn decide(&self, posting: &Posting) -> Intent {
        let span = info_span!("policy.decide", decision = Empty);
        let decision = span.in_scope(|| self.policy.decide(posting, chrono::Utc::now()));
        match decision {
            Decision::Skip(reasons) => {
                span.record("decision", "skip");
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

    /// The scoring service's verdict on a posting the rules would bid on: `None` to bid, a skip
    /// reason, or (when it cannot answer and `on_failure = "wait"`) the outcome to wait with.
    async fn score(&self, posting: &Posting, scoring: &Scoring) -> Result<Option<String>, Outcome> {
        let span = info_span!("scoring", result = Empty);
        let scored = scoring.scorer.score(posting).instrument(span.clone()).await;
        let verdict = match scored {
            Ok(score) if score >= scoring.threshold => Ok(None),
            Ok(score) => Ok(Some(format!(
                "score_below_threshold:{score:.3}<{}",
                scoring.threshold
            ))),
            Err(e) => match scoring.on_failure {
                OnScoringFailure::Rules => Ok(None),
                OnScoringFailure::Skip => Ok(Some("scoring_unavailable".to_owned())),
                OnScoringFailure::Wait => Err(Outcome::Unavailable {
                    component: Component::Scoring,
                    error: crate::error::chain(&e),
                }),
            },
        };
        span.record(
            "result",
            match &verdict {
                Ok(None) => "bid",
                Ok(Some(_)) => "skip",
                Err(_) => "unavailable",
            },
        );
        verdict
    }

    /// Checks the marketplace may be called (when the intent needs it), then takes the lease.
    async fn under_permit(
        &self,
        key: &PostingKey,
        intent: Intent,
        context: &AttemptContext,
        trace_headers: &BTreeMap<String, String>,
    ) -> Outcome {
        let probe = if matches!(intent, Intent::Skip(_)) {
            None
        } else {
            match self.breakers.permit(key.marketplace(), Instant::now()) {
                Permit::Go => None,
                Permit::Probe(guard) => Some(guard),
                Permit::Wait { retry_in, reason } => {
                    return Outcome::MarketplacePaused { reason, retry_in };
                }
            }
        };
        if !matches!(intent, Intent::Skip(_))
            && let Some(rate) = self.rates.get(key.marketplace())
        {
            let admitted = step!(
                "rate.admit",
                self.locks.admit(key.marketplace(), rate),
                |r: &Result<Admission, _>| match r {
                    Err(_) => "error",
                    Ok(Admission::Go) => "go",
                    Ok(Admission::Wait(_)) => "wait",
                }
            );
            match admitted {
                Err(e) => return lock_store_down(&e),
                Ok(Admission::Wait(retry_in)) => return Outcome::RateLimited { retry_in },
                Ok(Admission::Go) => {}
            }
        }
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
            Err(e) => return lock_store_down(&e),
            Ok(None) => return self.lock_held(key).await,
            Ok(Some(lease)) => HeldLease::start(self.locks.clone(), lease),
        };
        let outcome = self
            .under_lease(key, intent, context, &held, probe, trace_headers)
            .await;
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
            // The TTL frees it; the outcome stands because the ledger has it.
            tracing::warn!(error = %crate::error::Chain(&e), "Lease release failed; it will expire by TTL");
        }
        outcome
    }

    /// Another worker holds the lease: wait for what is left of it, plus jitter so that the
    /// waiting copies do not all come back at once.
    async fn lock_held(&self, key: &PostingKey) -> Outcome {
        let left = match self.locks.holder(key).await {
            Ok(Some(holder)) => holder.ttl_left.min(self.lease_ttl),
            // Expired meanwhile: come back at once (the smallest tier).
            Ok(None) => Duration::ZERO,
            // Cannot ask: assume a fresh lease.
            Err(_) => self.lease_ttl,
        };
        let jitter_cap = (left / 10).clamp(Duration::from_millis(50), Duration::from_secs(2));
        let jitter = jitter_cap.mul_f64(fastrand::f64());
        Outcome::LockHeld {
            retry_in: left.saturating_add(jitter),
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
        trace_headers: &BTreeMap<String, String>,
    ) -> Outcome {
        let request = ClaimRequest {
            key: key.clone(),
            event_id: context.event_id.clone(),
            intent,
            instance: self.instance.clone(),
            trace_id: context.trace_id.clone(),
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
        let (epoch, stored) = match claimed {
            Err(e) => return ledger_down(&e),
            Ok(Claim::Final(entry)) => return Outcome::Duplicate(entry.state),
            Ok(Claim::Nothing) => return Outcome::Duplicate(crate::ledger::LedgerState::Pending),
            Ok(Claim::Skipped { reasons, .. }) => return Outcome::Skipped { reasons },
            Ok(Claim::Send { epoch, request, .. }) => (epoch, request),
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
        let (finish, done) = self.call(key, &stored, probe, trace_headers).await;
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

/// An attempt that ends with the row still pending.
fn pending(result: &str, http_status: Option<u16>) -> Finish {
    Finish::Pending {
        result: result.to_owned(),
        http_status,
        detail: None,
    }
}

/// Bounded label of a fenced write, for the step spans.
fn fence_result(result: &Result<Fenced, LedgerError>) -> &'static str {
    match result {
        Err(_) => "error",
        Ok(Fenced::Written) => "written",
        Ok(Fenced::Final(_)) => "final",
        Ok(Fenced::Superseded { .. }) => "superseded",
    }
}

/// Bounded label of the first ledger lookup.
fn lookup_result(found: &Result<Option<LedgerEntry>, LedgerError>) -> &'static str {
    match found {
        Err(_) => "error",
        Ok(None) => "absent",
        Ok(Some(entry)) if entry.state.is_final() => "final",
        Ok(Some(entry)) if entry.sends > 0 => "sent",
        Ok(Some(_)) => "pending",
    }
}
