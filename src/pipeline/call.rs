//! The marketplace call, in its `bid` span: the stored request sent in the posting's trace, the
//! answer reported to the marketplace's breaker, and what it means for the ledger ([`Finish`])
//! and for the message ([`Outcome`]). On an API without idempotency keys a refusal is looked up
//! before it is recorded: after a lost answer it may be the marketplace's "you already bid".

use std::ops::ControlFlow;
use std::time::Instant;

use tracing::{Instrument, debug_span, field::Empty};

use super::claim::Claimed;
use super::{AttemptContext, Component, Outcome, Pipeline, PlacedVia};
use crate::flow::{PauseReason, ProbeGuard, Signal};
use crate::ledger::{FinalOutcome, Finish, Pending};
use crate::marketplace::{BidRequest, BidResult};
use crate::posting::PostingKey;
use crate::telemetry;

impl Pipeline {
    /// Sends `claimed`'s request and classifies the answer. `probe` is the breaker's probe slot
    /// when this call probes a paused marketplace.
    pub(super) async fn call(
        &self,
        key: &PostingKey,
        claimed: &Claimed,
        probe: Option<ProbeGuard>,
        context: &AttemptContext,
    ) -> (Finish, Outcome) {
        let (finish, outcome) = self.send(key, claimed, probe, context).await;
        if matches!(finish, Finish::Final(FinalOutcome::Rejected { .. })) && self.verifies(key) {
            let (found, verdict) = self.look_up(key, claimed, None, context).await;
            if let ControlFlow::Break(settled) = self.settle_lookup(key, found, verdict) {
                return settled;
            }
        }
        (finish, outcome)
    }

    /// Sends the request once and classifies the answer.
    async fn send(
        &self,
        key: &PostingKey,
        claimed: &Claimed,
        probe: Option<ProbeGuard>,
        context: &AttemptContext,
    ) -> (Finish, Outcome) {
        // The marketplace sees this step as the caller: its context is the `traceparent` sent,
        // in the posting's trace (linked to this attempt when that is another trace).
        let span = debug_span!("bid", result = Empty);
        let trace_headers = telemetry::call_trace_headers(
            &span,
            claimed.trace_parent.as_deref(),
            &context.trace_headers,
        );
        let bid = BidRequest {
            key: key.clone(),
            api: claimed.request.api.clone(),
            body: claimed.request.body.clone(),
            trace_headers,
        };
        let placed = self
            .marketplace
            .place_bid(&bid)
            .instrument(span.clone())
            .await;
        span.record(
            "result",
            match &placed {
                Ok(result) => result.label(),
                Err(_) => "error",
            },
        );
        let result = match placed {
            Ok(result) => result,
            Err(e) => {
                let error = crate::error::chain(&e);
                return (
                    Finish::Pending {
                        reason: Pending::CallFailed,
                        http_status: None,
                        detail: Some(error.clone()),
                        back_at: None,
                    },
                    Outcome::Unavailable {
                        component: Component::Marketplace,
                        error,
                    },
                );
            }
        };
        let now = Instant::now();
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
        let pending =
            |reason: Pending, status: Option<u16>, detail: Option<String>| Finish::Pending {
                reason,
                http_status: status,
                detail,
                back_at: None,
            };
        match result {
            BidResult::Placed { bid_id, replay } => (
                Finish::Final(FinalOutcome::Placed {
                    bid_id: Some(bid_id.clone()),
                    detail: replay.then(|| "replay".to_owned()),
                    http_status: Some(if replay { 200 } else { 201 }),
                }),
                Outcome::Placed {
                    bid_id: Some(bid_id),
                    via: if replay {
                        PlacedVia::Replay
                    } else {
                        PlacedVia::New
                    },
                },
            ),
            BidResult::AlreadyPlaced { bid_id, detail } => (
                Finish::Final(FinalOutcome::Placed {
                    bid_id: bid_id.clone(),
                    detail: Some(format!("409: {detail}")),
                    http_status: Some(409),
                }),
                Outcome::Placed {
                    bid_id,
                    via: PlacedVia::Conflict,
                },
            ),
            BidResult::Unauthorized { status } => (
                pending(Pending::Unauthorized, Some(status), None),
                paused(PauseReason::Credentials),
            ),
            // A 404 from a marketplace not yet known to answer is its base_url, not the posting.
            BidResult::Rejected { status: 404, .. } if !verdict.not_found_is_final => (
                pending(Pending::NotFound, Some(404), None),
                paused(PauseReason::NotFound),
            ),
            BidResult::Rejected {
                status,
                body_excerpt,
            } => (
                Finish::Final(FinalOutcome::Rejected {
                    status,
                    body_excerpt,
                }),
                Outcome::Rejected { status },
            ),
            BidResult::RateLimited { retry_after } => (
                pending(Pending::RateLimited, Some(429), None),
                Outcome::Transient {
                    reason: "HTTP 429".to_owned(),
                    retry_after: Some(
                        retry_after
                            .unwrap_or_else(|| self.breakers.retry_in(key.marketplace(), now)),
                    ),
                    counts: false,
                },
            ),
            BidResult::Transient {
                reason,
                retry_after,
                status,
                reached,
            } => (
                Finish::Pending {
                    reason: if reached {
                        Pending::Transient
                    } else {
                        Pending::Unreached
                    },
                    http_status: status,
                    detail: Some(reason.clone()),
                    // The marketplace said when to come back: reconcile leaves it till then.
                    back_at: retry_after.and_then(|d| {
                        chrono::Duration::from_std(d)
                            .ok()
                            .map(|d| chrono::Utc::now() + d)
                    }),
                },
                Outcome::Transient {
                    reason,
                    retry_after,
                    counts: verdict.counts,
                },
            ),
        }
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
