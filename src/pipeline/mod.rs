//! One posting event through ledger → lease → claim → decide → fence → bid → record.
//!
//! Plain logic over the ports; it returns an [`Outcome`], and [`Outcome::action`] (in
//! `outcome.rs`) is the spec's outcome table, in one place.
//!
//! Tracing: the `pipeline` span (with `marketplace`, `posting_id`, `outcome`) has one child per
//! step — `ledger.lookup`, `lease.acquire`, `ledger.claim`, `policy.decide`, `ledger.fence`,
//! `bid` (the marketplace call; its context is the `traceparent` the marketplace receives),
//! `ledger.record`, `lease.release` — each with a bounded `result`. Span names carry no ids.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use tracing::{Instrument, field::Empty, info_span};

use crate::flow::{Breakers, Dependency, PauseReason, Permit, ProbeGuard, Signal};
use crate::ledger::{BidLedger, Claim, Fenced, FinalOutcome, LedgerEntry, LedgerError};
use crate::lock::{HeldLease, LockError, LockStore, Release};
use crate::marketplace::{BidRequest, BidResult, Marketplace};
use crate::policy::{Decision, Policy};
use crate::posting::{Posting, PostingKey};
use crate::telemetry;

mod outcome;

pub use self::outcome::{Action, Component, Envelope, Outcome, PlacedVia, RetryRules};

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

/// The outcome of a fenced write that did not happen.
fn fenced_miss(fenced: Fenced, superseded: Outcome) -> Outcome {
    match fenced {
        Fenced::Written => unreachable!("only called for a write that did not happen"),
        Fenced::Final(entry) => Outcome::Duplicate(entry.state),
        Fenced::Superseded { .. } => superseded,
    }
}

/// The bid pipeline over its ports. Cheap to share: wrap in an `Arc`.
pub struct Pipeline {
    ledger: Arc<dyn BidLedger>,
    locks: Arc<dyn LockStore>,
    marketplace: Arc<dyn Marketplace>,
    policy: Policy,
    lease_ttl: Duration,
    /// Per-marketplace pauses; shared by every task of this pipeline.
    breakers: Breakers,
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
            breakers: Breakers::new(crate::flow::BreakerSettings::default()),
        }
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
        trace_headers: &BTreeMap<String, String>,
    ) -> Outcome {
        let outcome = self.steps(posting, trace_headers).await;
        tracing::Span::current().record("outcome", outcome.label());
        outcome
    }

    async fn steps(&self, posting: &Posting, trace_headers: &BTreeMap<String, String>) -> Outcome {
        let key = &posting.key;
        // Cheap first check: most duplicates end here without touching Redis.
        let found = step!("ledger.lookup", self.ledger.lookup(key), lookup_result);
        match found {
            Err(e) => return ledger_down(&e),
            Ok(Some(entry)) if entry.state.is_final() => return Outcome::Duplicate(entry.state),
            Ok(_) => {}
        }
        // A paused marketplace is not called: its postings wait, no lease taken, no claim made.
        let probe = match self
            .breakers
            .permit(key.marketplace(), std::time::Instant::now())
        {
            Permit::Go => None,
            Permit::Probe(guard) => Some(guard),
            Permit::Wait { retry_in, reason } => {
                return Outcome::MarketplacePaused { reason, retry_in };
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
            Err(e) => return lock_store_down(&e),
            Ok(None) => return self.lock_held(key).await,
            Ok(Some(lease)) => HeldLease::start(self.locks.clone(), lease),
        };
        let outcome = self.under_lease(posting, &held, probe, trace_headers).await;
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

    /// Claim, decide, fence, bid and record, while `held` is ours. `probe` is the breaker's
    /// probe slot when this call probes a paused marketplace (handed back if no call is made).
    async fn under_lease(
        &self,
        posting: &Posting,
        held: &HeldLease,
        probe: Option<ProbeGuard>,
        trace_headers: &BTreeMap<String, String>,
    ) -> Outcome {
        let key = &posting.key;
        let claimed = step!(
            "ledger.claim",
            self.ledger.claim(key, &posting.event_id),
            |r: &Result<Claim, _>| match r {
                Err(_) => "error",
                Ok(Claim::Final(_)) => "final",
                Ok(Claim::Claimed { .. }) => "claimed",
            }
        );
        let epoch = match claimed {
            Err(e) => return ledger_down(&e),
            Ok(Claim::Final(entry)) => return Outcome::Duplicate(entry.state),
            Ok(Claim::Claimed { epoch }) => epoch,
        };
        let (amount, currency, cover_letter) = match self.decide(posting).await {
            Err(e) => return ledger_down(&e),
            Ok(Decision::Skip(reasons)) => {
                let reasons: Vec<String> = reasons.iter().map(|r| r.describe()).collect();
                let outcome = FinalOutcome::Skipped {
                    reasons: reasons.clone(),
                };
                return match self.record(key, epoch, &outcome).await {
                    Err(e) => ledger_down(&e),
                    Ok(Fenced::Written) => Outcome::Skipped { reasons },
                    Ok(miss) => fenced_miss(miss, Outcome::LeaseLost),
                };
            }
            Ok(Decision::Bid {
                amount,
                currency,
                cover_letter,
            }) => (amount, currency, cover_letter),
        };
        // The fence: both the lease and the ledger epoch must still be ours right before the call.
        if held.is_lost() {
            return Outcome::LeaseLost;
        }
        let fenced = step!(
            "ledger.fence",
            self.ledger.mark_sending(key, epoch),
            fence_result
        );
        match fenced {
            Err(e) => return ledger_down(&e),
            Ok(Fenced::Written) => {}
            Ok(miss) => return fenced_miss(miss, Outcome::LeaseLost),
        }
        if held.is_lost() {
            return Outcome::LeaseLost;
        }
        let (final_outcome, done) = match self
            .bid(key, amount, currency, cover_letter, probe, trace_headers)
            .await
        {
            Ok(recorded) => recorded,
            Err(outcome) => return outcome,
        };
        match self.record(key, epoch, &final_outcome).await {
            Err(e) => ledger_down(&e),
            Ok(Fenced::Written) => done,
            Ok(miss) => fenced_miss(miss, Outcome::Superseded),
        }
    }

    /// The policy's decision, in its `policy.decide` span (with today's count when a cap is set).
    async fn decide(&self, posting: &Posting) -> Result<Decision, LedgerError> {
        let span = info_span!("policy.decide", decision = Empty);
        let placed_today = if self.policy.needs_daily_count() {
            let count = self
                .ledger
                .placed_since(start_of_day_utc())
                .instrument(info_span!(parent: &span, "ledger.daily_count"))
                .await?;
            Some(count)
        } else {
            None
        };
        let decision = span.in_scope(|| self.policy.decide(posting, placed_today));
        span.record(
            "decision",
            match &decision {
                Decision::Skip(_) => "skip",
                Decision::Bid { .. } => "bid",
            },
        );
        Ok(decision)
    }

    /// The marketplace call, in its `bid` span: the final outcome to record and the pipeline's
    /// outcome once recorded, or the outcome to return without recording (transient, unknown).
    async fn bid(
        &self,
        key: &PostingKey,
        amount: rust_decimal::Decimal,
        currency: String,
        cover_letter: String,
        probe: Option<ProbeGuard>,
        trace_headers: &BTreeMap<String, String>,
    ) -> Result<(FinalOutcome, Outcome), Outcome> {
        // The marketplace sees this step as the caller: its context is the `traceparent` sent
        // (the incoming headers when tracing export is off, so the trace still connects).
        let bid_span = info_span!("bid", result = Empty);
        let bid = BidRequest {
            key: key.clone(),
            amount,
            currency,
            cover_letter,
            trace_headers: telemetry::outgoing_trace_headers(&bid_span, trace_headers),
        };
        let placed = self
            .marketplace
            .place_bid(&bid)
            .instrument(bid_span.clone())
            .await;
        bid_span.record(
            "result",
            match &placed {
                Ok(result) => result.label(),
                Err(_) => "error",
            },
        );
        let result = placed.map_err(|e| Outcome::Unavailable {
            component: Component::Marketplace,
            error: crate::error::chain(&e),
        })?;
        let now = std::time::Instant::now();
        let verdict = match probe {
            Some(probe) => self.breakers.record_probe(probe, signal(&result), now),
            None => self
                .breakers
                .record(key.marketplace(), signal(&result), now),
        };
        let paused = |reason: PauseReason| Outcome::MarketplacePaused {
            reason,
            retry_in: self.breakers.retry_in(key.marketplace(), now),
        };
        Ok(match result {
            BidResult::Placed { bid_id, replay } => (
                FinalOutcome::Placed {
                    bid_id: Some(bid_id.clone()),
                    detail: replay.then(|| "replay".to_owned()),
                },
                Outcome::Placed {
                    bid_id: Some(bid_id),
                    via: if replay {
                        PlacedVia::Replay
                    } else {
                        PlacedVia::New
                    },
                },
            ),
            BidResult::AlreadyPlaced { detail } => (
                FinalOutcome::Placed {
                    bid_id: None,
                    detail: Some(format!("409: {detail}")),
                },
                Outcome::Placed {
                    bid_id: None,
                    via: PlacedVia::Conflict,
                },
            ),
            BidResult::Unauthorized { .. } => return Err(paused(PauseReason::Credentials)),
            BidResult::RateLimited { retry_after } => {
                return Err(Outcome::Transient {
                    reason: "HTTP 429".to_owned(),
                    retry_after: Some(
                        retry_after
                            .unwrap_or_else(|| self.breakers.retry_in(key.marketplace(), now)),
                    ),
                    counts: false,
                });
            }
            // A 404 from a marketplace not yet known to answer is its base_url, not the posting.
            BidResult::Rejected { status: 404, .. } if !verdict.not_found_is_final => {
                return Err(paused(PauseReason::NotFound));
            }
            BidResult::Rejected {
                status,
                body_excerpt,
            } => (
                FinalOutcome::Rejected {
                    status,
                    body_excerpt,
                },
                Outcome::Rejected { status },
            ),
            BidResult::Transient {
                reason,
                retry_after,
            } => {
                return Err(Outcome::Transient {
                    reason,
                    retry_after,
                    counts: verdict.counts,
                });
            }
        })
    }

    /// Writes a final outcome under the epoch fence, in its `ledger.record` span.
    async fn record(
        &self,
        key: &PostingKey,
        epoch: i64,
        outcome: &FinalOutcome,
    ) -> Result<Fenced, LedgerError> {
        step!(
            "ledger.record",
            self.ledger.record(key, epoch, outcome),
            fence_result
        )
    }
}

/// What a marketplace answer says about the marketplace's own health.
fn signal(result: &BidResult) -> Signal {
    match result {
        BidResult::Placed { .. } | BidResult::AlreadyPlaced { .. } => Signal::Answered,
        BidResult::Unauthorized { .. } => Signal::Unauthorized,
        BidResult::Rejected { status: 404, .. } => Signal::NotFound,
        BidResult::Rejected { .. } => Signal::Answered,
        BidResult::RateLimited { retry_after } => Signal::RateLimited {
            retry_after: *retry_after,
        },
        BidResult::Transient { .. } => Signal::Transient,
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
        Ok(Some(_)) => "pending",
    }
}

fn start_of_day_utc() -> chrono::DateTime<Utc> {
    let today = Utc::now().date_naive();
    Utc.from_utc_datetime(&today.and_hms_opt(0, 0, 0).expect("midnight exists"))
}
