//! The marketplace call, in its `bid` span: the stored request sent under the idempotency key,
//! the answer reported to the marketplace's breaker, and what it means for the ledger
//! ([`Finish`]) and for the message ([`Outcome`]).

use std::time::Instant;

use tracing::{Instrument, debug_span, field::Empty};

use super::{AttemptContext, Component, Outcome, Pipeline, PlacedVia};
use crate::flow::{PauseReason, ProbeGuard, Signal};
use crate::ledger::{FinalOutcome, Finish, LedgerState, StoredRequest};
use crate::marketplace::{BidRequest, BidResult};
use crate::posting::PostingKey;
use crate::telemetry;

/// The trace a marketplace call runs in: the posting's — its first attempt's `traceparent`, kept
/// by the ledger — whichever attempt, event or `reconcile` makes the call; and this attempt.
pub(super) struct PostingTrace<'a> {
    /// The posting's trace; `None` for a row from before it was kept (this attempt's is used).
    pub parent: Option<&'a str>,
    pub attempt: &'a AttemptContext,
}

impl Pipeline {
    /// Sends `stored` and classifies the answer. `probe` is the breaker's probe slot when this
    /// call probes a paused marketplace.
    pub(super) async fn call(
        &self,
        key: &PostingKey,
        stored: &StoredRequest,
        probe: Option<ProbeGuard>,
        trace: PostingTrace<'_>,
    ) -> (Finish, Outcome) {
        // The marketplace sees this step as the caller: its context is the `traceparent` sent,
        // in the posting's trace (linked to this attempt when that is another trace).
        let span = debug_span!("bid", result = Empty);
        let trace_headers =
            telemetry::call_trace_headers(&span, trace.parent, &trace.attempt.trace_headers);
        let bid = BidRequest {
            key: key.clone(),
            body: stored.body.clone(),
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
                    pending("unknown_marketplace", None, Some(error.clone())),
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
                pending("unauthorized", Some(status), None),
                paused(PauseReason::Credentials),
            ),
            // A 404 from a marketplace not yet known to answer is its base_url, not the posting.
            BidResult::Rejected { status: 404, .. } if !verdict.not_found_is_final => (
                pending("not_found", Some(404), None),
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
                pending("rate_limited", Some(429), None),
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
            } => (
                pending("transient", status, Some(reason.clone())),
                Outcome::Transient {
                    reason,
                    retry_after,
                    counts: verdict.counts,
                },
            ),
        }
    }
}

/// An attempt that ends with the row still pending.
fn pending(result: &str, http_status: Option<u16>, detail: Option<String>) -> Finish {
    Finish::Pending {
        result: result.to_owned(),
        http_status,
        detail,
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

/// Our bid exists (the marketplace said so), yet the row became final as something else: the
/// ledger tells a lie an operator must hear about. Never silent.
pub(super) fn report_mismatch(key: &PostingKey, done: &Outcome, recorded: LedgerState) {
    if matches!(done, Outcome::Placed { .. }) && recorded != LedgerState::Placed {
        metrics::counter!(crate::metrics::MISMATCHES, "marketplace" => key.marketplace().to_owned()).increment(1);
        tracing::error!(
            marketplace = key.marketplace(),
            posting_id = key.posting_id(),
            recorded = recorded.as_str(),
            "The marketplace has our bid but the ledger says otherwise; reconcile by hand"
        );
    }
}
