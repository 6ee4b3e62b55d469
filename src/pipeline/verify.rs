//! Verify before resend: on an API without idempotency keys a send whose answer was lost may
//! have placed the bid, so before anything else happens to the posting our bid is looked up —
//! no sooner than `lookup_delay` after that send, in the posting's trace. Found: `placed` with
//! its id, nothing sent. Not found: every unknown send is recorded absent and the stored request
//! is claimed and sent again. Gone (`404` from a marketplace known to answer): `rejected`. No
//! answer: the marketplace is unavailable — wait, nothing counted.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::{Instrument, debug_span, field::Empty};

use super::claim::Claimed;
use super::{AttemptContext, Component, Outcome, Pipeline, PlacedVia, Step};
use crate::flow::{PauseReason, ProbeGuard, Signal, Verdict};
use crate::ledger::{Fenced, FinalOutcome, Finish, Intent, Pending};
use crate::marketplace::{Lookup, LookupRequest};
use crate::posting::PostingKey;
use crate::telemetry;

impl Pipeline {
    /// How long until a send of `marketplace` that started at `sent_at` may be looked up: `None`
    /// when it may be now (or its API does not look up).
    pub(super) fn lookup_due_in(
        &self,
        marketplace: &str,
        sent_at: Option<DateTime<Utc>>,
    ) -> Option<Duration> {
        let delay = self.marketplace.capabilities(marketplace)?.lookup_delay;
        let sent_at = sent_at?;
        let since = Utc::now()
            .signed_duration_since(sent_at)
            .to_std()
            .unwrap_or_default();
        delay.checked_sub(since).filter(|left| !left.is_zero())
    }

    /// Looks our bid on `key` up, for `claimed` (that is, in the posting's trace) and verifies
    /// the answer: the outcome when it settles the posting, else the request claimed again to
    /// be sent (its permit still to take).
    pub(super) async fn verify(
        &self,
        key: &PostingKey,
        claimed: &Claimed,
        probe: Option<ProbeGuard>,
        context: &AttemptContext,
    ) -> Step<Claimed> {
        let (found, verdict) = self.look_up(key, claimed, probe, context).await;
        let settled = match self.settle_lookup(key, found, verdict) {
            ControlFlow::Break(settled) => settled,
            ControlFlow::Continue(()) => {
                // No bid of ours: every send of unknown fate is known absent, and a new claim
                // sends the stored request again.
                let absent = Finish::pending(Pending::NoBidFound);
                return match self.finish(key, claimed.epoch, absent).await {
                    Err(e) => ControlFlow::Break(Outcome::unavailable(Component::Ledger, &e)),
                    Ok(Fenced::Final(entry)) => ControlFlow::Break(Outcome::Duplicate(entry.state)),
                    Ok(Fenced::Superseded { .. }) => ControlFlow::Break(Outcome::LeaseLost),
                    Ok(Fenced::Written) => self.claim_resend(key, context).await,
                };
            }
        };
        let (finish, outcome) = settled;
        ControlFlow::Break(
            self.finish_called(key, claimed.epoch, finish, outcome)
                .await,
        )
    }

    /// The claim that sends again after a lookup found nothing.
    async fn claim_resend(&self, key: &PostingKey, context: &AttemptContext) -> Step<Claimed> {
        let mut again = self.claim(key, Intent::Resend, None, context).await?;
        if again.verify.is_some() {
            // Another send of unknown fate appeared since the lookup: only a holder that lost
            // its lease can have made it. Its own lookup will settle it.
            return ControlFlow::Break(
                self.finish_uncalled(key, again.epoch, Pending::LeaseLost, Outcome::LeaseLost)
                    .await,
            );
        }
        again.permitted = false;
        ControlFlow::Continue(again)
    }

    /// What a lookup's answer settles: the attempt's finish and outcome — or, for no bid found,
    /// nothing yet (`Continue`): the caller decides between a resend and a rejection.
    pub(super) fn settle_lookup(
        &self,
        key: &PostingKey,
        found: Lookup,
        verdict: Verdict,
    ) -> ControlFlow<(Finish, Outcome)> {
        let now = Instant::now();
        let paused = |reason: PauseReason| Outcome::MarketplacePaused {
            reason,
            retry_in: self.breakers.retry_in(key.marketplace(), now),
        };
        let pending =
            |reason: Pending, status: Option<u16>, detail: Option<String>| Finish::Pending {
                reason,
                http_status: status,
                detail,
                back_at: None,
            };
        ControlFlow::Break(match found {
            Lookup::NotFound => return ControlFlow::Continue(()),
            Lookup::Found { bid_id } => (
                Finish::Final(FinalOutcome::Found {
                    bid_id: bid_id.clone(),
                }),
                Outcome::Placed {
                    bid_id: Some(bid_id),
                    via: PlacedVia::Lookup,
                },
            ),
            Lookup::Gone if verdict.not_found_is_final => (
                Finish::Final(FinalOutcome::Rejected {
                    status: 404,
                    body_excerpt: "the posting is gone (lookup)".to_owned(),
                }),
                Outcome::Rejected { status: 404 },
            ),
            // As for a bid: a 404 from a marketplace not yet known to answer is its base_url.
            Lookup::Gone => (
                pending(Pending::NotFound, Some(404), None),
                paused(PauseReason::NotFound),
            ),
            Lookup::Unanswered {
                reason,
                status: Some(status @ (401 | 403 | 407)),
            } => (
                pending(Pending::LookupFailed, Some(status), Some(reason)),
                paused(PauseReason::Credentials),
            ),
            Lookup::Unanswered { reason, status } => (
                pending(Pending::LookupFailed, status, Some(reason.clone())),
                Outcome::Unavailable {
                    component: Component::Marketplace,
                    error: format!("the bid lookup did not answer: {reason}"),
                },
            ),
        })
    }

    /// One lookup of our bid on `key`, in its `lookup` span in the posting's trace, reported to
    /// the marketplace's breaker (as the probe, if `probe`).
    pub(super) async fn look_up(
        &self,
        key: &PostingKey,
        claimed: &Claimed,
        probe: Option<ProbeGuard>,
        context: &AttemptContext,
    ) -> (Lookup, Verdict) {
        let span = debug_span!("lookup", result = Empty);
        let trace_headers = telemetry::call_trace_headers(
            &span,
            claimed.trace_parent.as_deref(),
            &context.trace_headers,
        );
        let request = LookupRequest {
            key: key.clone(),
            trace_headers,
        };
        let found = match self
            .marketplace
            .find_bid(&request)
            .instrument(span.clone())
            .await
        {
            Ok(found) => found,
            Err(e) => Lookup::Unanswered {
                reason: crate::error::chain(&e),
                status: None,
            },
        };
        span.record("result", found.label());
        let signal = match &found {
            Lookup::Found { .. } | Lookup::NotFound => Signal::Answered,
            Lookup::Gone => Signal::NotFound,
            Lookup::Unanswered {
                status: Some(401 | 403 | 407),
                ..
            } => Signal::Unauthorized,
            Lookup::Unanswered {
                status: Some(429), ..
            } => Signal::RateLimited { retry_after: None },
            Lookup::Unanswered { .. } => Signal::Transient,
        };
        let now = Instant::now();
        let verdict = match probe {
            Some(probe) => self.breakers.record_probe(probe, signal, now),
            None => self.breakers.record(key.marketplace(), signal, now),
        };
        (found, verdict)
    }
}
