//! One posting event through ledger → lease → claim → decide → fence → bid → record.
//!
//! Plain logic over the ports; it returns an [`Outcome`], and [`Outcome::action`] is the spec's
//! outcome table, in one place:
//!
//! | situation                                   | ledger                      | message            |
//! |---------------------------------------------|-----------------------------|--------------------|
//! | ledger already has a final outcome           | unchanged                   | ack (duplicate)    |
//! | lock held by another worker                  | unchanged                   | retry with delay   |
//! | Redis / ledger unreachable                   | unchanged                   | retry (fail closed)|
//! | should-bid says no                           | `skipped` + reasons         | ack                |
//! | bid placed (2xx, replay, or 409)             | `placed` + bid id           | ack                |
//! | marketplace 429 / 5xx / timeout              | `pending` kept              | retry (Retry-After)|
//! | marketplace other 4xx                        | `rejected` + status/excerpt | ack                |
//! | lease lost / claim superseded before the bid | unchanged                   | retry, no call made|
//! | poison message                               | none                        | dead-letter        |
//!
//! Tracing: the `pipeline` span (with `marketplace`, `posting_id`, `outcome`) has one child per
//! step — `ledger.lookup`, `lease.acquire`, `ledger.claim`, `policy.decide`, `ledger.fence`,
//! `bid` (the marketplace call; its context is the `traceparent` the marketplace receives),
//! `ledger.record`, `lease.release` — each with a bounded `result`. Span names carry no ids.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use tracing::{Instrument, field::Empty, info_span};

use crate::ledger::{BidLedger, Claim, Fenced, FinalOutcome, LedgerError, LedgerState};
use crate::lock::{HeldLease, LockError, LockStore, Release};
use crate::marketplace::{BidRequest, BidResult, Marketplace, MarketplaceError};
use crate::policy::{Decision, Policy};
use crate::posting::{Posting, PostingError};
use crate::telemetry;

/// Retry delays per situation (`[worker]` settings).
#[derive(Clone, Copy, Debug)]
pub struct RetryDelays {
    pub lock_held: Duration,
    pub unavailable: Duration,
    pub transient: Duration,
}

/// How a bid came to be recorded as placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacedVia {
    /// `201`: a new bid.
    New,
    /// `200`: the marketplace replayed our idempotency key (an earlier attempt had placed it).
    Replay,
    /// `409`: a bid exists under another key.
    Conflict,
}

/// Which dependency failed closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Redis,
    Ledger,
    Marketplace,
}

impl Component {
    fn label(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Ledger => "ledger",
            Self::Marketplace => "marketplace",
        }
    }
}

/// What happened to one event. Every variant maps to exactly one [`Action`].
#[derive(Debug)]
pub enum Outcome {
    /// The body is not a valid posting event.
    Poison(PostingError),
    /// The ledger already had a final outcome (found before or inside the lease).
    Duplicate(LedgerState),
    /// Another worker holds the lease.
    LockHeld,
    /// A dependency could not answer; nothing was decided.
    Unavailable { component: Component, error: String },
    /// The policy declined; recorded as `skipped`.
    Skipped { reasons: Vec<String> },
    /// A bid exists and is recorded as `placed`.
    Placed {
        bid_id: Option<String>,
        via: PlacedVia,
    },
    /// The marketplace could not take the bid now; the row stays `pending`.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The marketplace refused the bid permanently; recorded as `rejected`.
    Rejected { status: u16 },
    /// The lease was lost or the claim superseded before the marketplace call; no call made.
    LeaseLost,
    /// The bid call happened but a newer claim superseded ours before we could record it: the
    /// newer holder replays the idempotency key and records it.
    Superseded,
}

/// What to do with the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Ack,
    Retry {
        delay: Duration,
        reason: &'static str,
    },
    DeadLetter {
        reason: &'static str,
        detail: String,
    },
}

impl Outcome {
    /// The spec's outcome table: one match, one place.
    pub fn action(&self, delays: &RetryDelays) -> Action {
        match self {
            Self::Poison(e) => Action::DeadLetter {
                reason: e.reason(),
                detail: e.to_string(),
            },
            Self::Duplicate(_)
            | Self::Skipped { .. }
            | Self::Placed { .. }
            | Self::Rejected { .. } => Action::Ack,
            Self::LockHeld => Action::Retry {
                delay: delays.lock_held,
                reason: "lock_held",
            },
            Self::Unavailable { component, .. } => Action::Retry {
                delay: delays.unavailable,
                reason: match component {
                    Component::Redis => "redis_unavailable",
                    Component::Ledger => "ledger_unavailable",
                    Component::Marketplace => "marketplace_unavailable",
                },
            },
            Self::Transient { retry_after, .. } => Action::Retry {
                delay: retry_after.unwrap_or(delays.transient),
                reason: "marketplace_transient",
            },
            Self::LeaseLost => Action::Retry {
                delay: delays.lock_held,
                reason: "lease_lost",
            },
            Self::Superseded => Action::Retry {
                delay: delays.lock_held,
                reason: "superseded",
            },
        }
    }

    /// Bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Poison(_) => "poison",
            Self::Duplicate(_) => "duplicate",
            Self::LockHeld => "lock_held",
            Self::Unavailable { component, .. } => component.label(),
            Self::Skipped { .. } => "skipped",
            Self::Placed { .. } => "placed",
            Self::Transient { .. } => "transient",
            Self::Rejected { .. } => "rejected",
            Self::LeaseLost => "lease_lost",
            Self::Superseded => "superseded",
        }
    }
}

fn ledger_down(e: LedgerError) -> Outcome {
    Outcome::Unavailable {
        component: Component::Ledger,
        error: format!("{e}"),
    }
}

fn redis_down(e: LockError) -> Outcome {
    Outcome::Unavailable {
        component: Component::Redis,
        error: format!("{e}"),
    }
}

/// The bid pipeline over its ports. Cheap to share: wrap in an `Arc`.
pub struct Pipeline {
    ledger: Arc<dyn BidLedger>,
    locks: Arc<dyn LockStore>,
    marketplace: Arc<dyn Marketplace>,
    policy: Policy,
    lease_ttl: Duration,
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
        }
    }

    /// Parses an event body and runs it through the pipeline.
    pub async fn handle(
        &self,
        body: &[u8],
        trace_headers: &std::collections::BTreeMap<String, String>,
    ) -> (Option<Posting>, Outcome) {
        match Posting::parse(body, |m| self.marketplace.knows(m)) {
            Err(e) => (None, Outcome::Poison(e)),
            Ok(posting) => {
                let outcome = self.process(&posting, trace_headers).await;
                (Some(posting), outcome)
            }
        }
    }

    /// Runs one validated posting through the pipeline.
    #[tracing::instrument(name = "pipeline", skip_all, fields(marketplace = posting.key.marketplace(), posting_id = posting.key.posting_id(), outcome = Empty))]
    pub async fn process(
        &self,
        posting: &Posting,
        trace_headers: &std::collections::BTreeMap<String, String>,
    ) -> Outcome {
        let outcome = self.steps(posting, trace_headers).await;
        tracing::Span::current().record("outcome", outcome.label());
        outcome
    }

    async fn steps(
        &self,
        posting: &Posting,
        trace_headers: &std::collections::BTreeMap<String, String>,
    ) -> Outcome {
        let key = &posting.key;
        // Cheap first check: most duplicates end here without touching Redis.
        let span = info_span!("ledger.lookup", result = Empty);
        let found = self.ledger.lookup(key).instrument(span.clone()).await;
        span.record(
            "result",
            step_result(&found.as_ref().map(|e| e.as_ref().map(|e| e.state))),
        );
        match found {
            Err(e) => return ledger_down(e),
            Ok(Some(entry)) if entry.state.is_final() => return Outcome::Duplicate(entry.state),
            Ok(_) => {}
        }
        let span = info_span!("lease.acquire", result = Empty);
        let acquired = self
            .locks
            .try_acquire(key, self.lease_ttl)
            .instrument(span.clone())
            .await;
        span.record(
            "result",
            match &acquired {
                Err(_) => "error",
                Ok(None) => "held_elsewhere",
                Ok(Some(_)) => "acquired",
            },
        );
        let lease = match acquired {
            Err(e) => return redis_down(e),
            Ok(None) => return Outcome::LockHeld,
            Ok(Some(lease)) => lease,
        };
        let held = HeldLease::start(self.locks.clone(), lease);
        let outcome = self.under_lease(posting, &held, trace_headers).await;
        let span = info_span!("lease.release", result = Empty);
        match held.release().instrument(span.clone()).await {
            Ok(release) => {
                span.record(
                    "result",
                    match release {
                        Release::Released => "released",
                        Release::NotOwned => "not_owned",
                    },
                );
            }
            Err(e) => {
                span.record("result", "error");
                // The TTL frees it; the outcome stands because the ledger has it.
                tracing::warn!(error = %e, "Lease release failed; it will expire by TTL");
            }
        }
        outcome
    }

    async fn under_lease(
        &self,
        posting: &Posting,
        held: &HeldLease,
        trace_headers: &std::collections::BTreeMap<String, String>,
    ) -> Outcome {
        let key = &posting.key;
        let span = info_span!("ledger.claim", result = Empty);
        let claimed = self
            .ledger
            .claim(key, &posting.event_id)
            .instrument(span.clone())
            .await;
        span.record(
            "result",
            match &claimed {
                Err(_) => "error",
                Ok(Claim::Final(_)) => "final",
                Ok(Claim::Claimed { .. }) => "claimed",
            },
        );
        let epoch = match claimed {
            Err(e) => return ledger_down(e),
            Ok(Claim::Final(entry)) => return Outcome::Duplicate(entry.state),
            Ok(Claim::Claimed { epoch }) => epoch,
        };
        let decide_span = info_span!("policy.decide", decision = Empty);
        let placed_today = if self.policy.needs_daily_count() {
            match self
                .ledger
                .placed_since(start_of_day_utc())
                .instrument(info_span!(parent: &decide_span, "ledger.daily_count"))
                .await
            {
                Ok(n) => Some(n),
                Err(e) => return ledger_down(e),
            }
        } else {
            None
        };
        let decision = decide_span.in_scope(|| self.policy.decide(posting, placed_today));
        decide_span.record(
            "decision",
            match &decision {
                Decision::Skip(_) => "skip",
                Decision::Bid { .. } => "bid",
            },
        );
        drop(decide_span);
        let (amount, currency, cover_letter) = match decision {
            Decision::Skip(reasons) => {
                let reasons: Vec<String> = reasons.iter().map(|r| r.describe()).collect();
                let outcome = FinalOutcome::Skipped {
                    reasons: reasons.clone(),
                };
                return match self.record(key, epoch, &outcome).await {
                    Err(e) => ledger_down(e),
                    Ok(Fenced::Written) => Outcome::Skipped { reasons },
                    Ok(Fenced::Final(entry)) => Outcome::Duplicate(entry.state),
                    Ok(Fenced::Superseded { .. }) => Outcome::LeaseLost,
                };
            }
            Decision::Bid {
                amount,
                currency,
                cover_letter,
            } => (amount, currency, cover_letter),
        };

        // The fence: both the lease and the ledger epoch must still be ours right before the call.
        if held.is_lost() {
            return Outcome::LeaseLost;
        }
        let span = info_span!("ledger.fence", result = Empty);
        let fenced = self
            .ledger
            .mark_sending(key, epoch)
            .instrument(span.clone())
            .await;
        span.record("result", fence_result(&fenced));
        match fenced {
            Err(e) => return ledger_down(e),
            Ok(Fenced::Written) => {}
            Ok(Fenced::Final(entry)) => return Outcome::Duplicate(entry.state),
            Ok(Fenced::Superseded { .. }) => return Outcome::LeaseLost,
        }
        if held.is_lost() {
            return Outcome::LeaseLost;
        }

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
        let started = Instant::now();
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
        let result = match placed {
            Ok(r) => r,
            Err(e @ MarketplaceError::Unknown(_)) | Err(e @ MarketplaceError::Config { .. }) => {
                return Outcome::Unavailable {
                    component: Component::Marketplace,
                    error: e.to_string(),
                };
            }
        };
        tracing::debug!(
            result = result.label(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Marketplace answered"
        );
        let (final_outcome, done) = match result {
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
                return Outcome::Transient {
                    reason,
                    retry_after,
                };
            }
        };
        match self.record(key, epoch, &final_outcome).await {
            Err(e) => ledger_down(e),
            Ok(Fenced::Written) => done,
            Ok(Fenced::Final(entry)) => Outcome::Duplicate(entry.state),
            Ok(Fenced::Superseded { .. }) => Outcome::Superseded,
        }
    }
}

impl Pipeline {
    /// Writes a final outcome under the epoch fence, in its `ledger.record` span.
    async fn record(
        &self,
        key: &crate::posting::PostingKey,
        epoch: i64,
        outcome: &FinalOutcome,
    ) -> Result<Fenced, LedgerError> {
        let span = info_span!("ledger.record", result = Empty);
        let written = self
            .ledger
            .record(key, epoch, outcome)
            .instrument(span.clone())
            .await;
        span.record("result", fence_result(&written));
        written
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
fn step_result(found: &Result<Option<LedgerState>, &LedgerError>) -> &'static str {
    match found {
        Err(_) => "error",
        Ok(None) => "absent",
        Ok(Some(state)) if state.is_final() => "final",
        Ok(Some(_)) => "pending",
    }
}

fn start_of_day_utc() -> chrono::DateTime<Utc> {
    let today = Utc::now().date_naive();
    Utc.from_utc_datetime(&today.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAYS: RetryDelays = RetryDelays {
        lock_held: Duration::from_secs(1),
        unavailable: Duration::from_secs(10),
        transient: Duration::from_secs(5),
    };

    #[test]
    fn final_outcomes_ack() {
        for o in [
            Outcome::Duplicate(LedgerState::Placed),
            Outcome::Skipped { reasons: vec![] },
            Outcome::Placed {
                bid_id: None,
                via: PlacedVia::Conflict,
            },
            Outcome::Rejected { status: 422 },
        ] {
            assert_eq!(o.action(&DELAYS), Action::Ack, "{o:?}");
        }
    }

    #[test]
    fn contention_and_outages_retry_with_delay() {
        assert_eq!(
            Outcome::LockHeld.action(&DELAYS),
            Action::Retry {
                delay: DELAYS.lock_held,
                reason: "lock_held"
            }
        );
        let redis = Outcome::Unavailable {
            component: Component::Redis,
            error: "down".into(),
        };
        assert_eq!(
            redis.action(&DELAYS),
            Action::Retry {
                delay: DELAYS.unavailable,
                reason: "redis_unavailable"
            }
        );
        assert!(matches!(
            Outcome::LeaseLost.action(&DELAYS),
            Action::Retry {
                reason: "lease_lost",
                ..
            }
        ));
    }

    #[test]
    fn transient_honours_a_longer_retry_after() {
        let o = Outcome::Transient {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            o.action(&DELAYS),
            Action::Retry {
                delay: Duration::from_secs(30),
                reason: "marketplace_transient"
            }
        );
        let o = Outcome::Transient {
            reason: "503".into(),
            retry_after: None,
        };
        assert!(
            matches!(o.action(&DELAYS), Action::Retry { delay, .. } if delay == DELAYS.transient)
        );
    }

    #[test]
    fn poison_dead_letters_with_its_reason() {
        let o = Outcome::Poison(PostingError::MissingField("title"));
        assert!(matches!(
            o.action(&DELAYS),
            Action::DeadLetter {
                reason: "missing_field",
                ..
            }
        ));
    }
}
