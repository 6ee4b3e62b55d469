//! The decision: what this attempt wants done with the posting — from the ledger for a posting
//! seen before (final, or a request already sent), else the policy's verdict and the scoring
//! service's, and the request in the words of the marketplace's API.

use std::ops::ControlFlow;
use std::sync::Arc;

use tracing::{Instrument, debug_span, field::Empty};

use super::{AttemptContext, Component, Outcome, Pipeline, Step};
use crate::config::OnScoringFailure;
use crate::ledger::{Intent, LedgerEntry, LedgerError};
use crate::marketplace::{BidTerms, RequestRefusal};
use crate::policy::Decision;
use crate::posting::Posting;
use crate::scorer::Scorer;

/// The scoring service and what to make of its answers.
pub struct Scoring {
    pub scorer: Arc<dyn Scorer>,
    pub threshold: f64,
    pub on_failure: OnScoringFailure,
}

impl Pipeline {
    /// The intent for `posting`, or the outcome that ends the attempt here (a final row, a
    /// ledger or scoring service that cannot answer).
    pub(super) async fn decide(&self, posting: &Posting, context: &AttemptContext) -> Step<Intent> {
        if context.seen_before {
            let found = step!(
                "ledger.lookup",
                self.ledger.lookup(&posting.key),
                lookup_result
            );
            match found {
                Err(e) => return ControlFlow::Break(Outcome::unavailable(Component::Ledger, &e)),
                Ok(Some(entry)) if entry.state.is_final() => {
                    return ControlFlow::Break(Outcome::Duplicate(entry.state));
                }
                // Sticky: once a request may have reached the marketplace, it is the decision.
                Ok(Some(entry)) if entry.sends > 0 => {
                    // A send of unknown fate whose lookup is not due yet: wait, unclaimed.
                    let due_in = entry
                        .unknown_since
                        .and_then(|_| self.lookup_due_in(posting.key.marketplace(), entry.sent_at));
                    if let (Some(retry_in), true) = (due_in, self.verifies(&posting.key)) {
                        return ControlFlow::Break(Outcome::LookupWait { retry_in });
                    }
                    return ControlFlow::Continue(Intent::Resend);
                }
                Ok(_) => {}
            }
        }
        let terms = match self.policy_decision(posting) {
            Ok(terms) => terms,
            Err(skip) => return ControlFlow::Continue(skip),
        };
        if let Some(scoring) = &self.scoring {
            match self.score(posting, scoring).await {
                Ok(None) => {}
                Ok(Some(reason)) => return ControlFlow::Continue(Intent::Skip(vec![reason])),
                Err(outcome) => return ControlFlow::Break(outcome),
            }
        }
        match self.marketplace.request_for(&posting.key, &terms).await {
            Ok(Ok(request)) => ControlFlow::Continue(Intent::Bid(request)),
            Ok(Err(RequestRefusal::Unsupported(reason))) => {
                ControlFlow::Continue(Intent::Skip(vec![reason.to_owned()]))
            }
            Ok(Err(RequestRefusal::Unavailable(error))) => {
                ControlFlow::Break(Outcome::Unavailable {
                    component: Component::Marketplace,
                    error,
                })
            }
            Err(e) => ControlFlow::Break(Outcome::unavailable(Component::Marketplace, &e)),
        }
    }

    /// Whether `key`'s marketplace looks a send of unknown fate up before sending it again.
    pub(super) fn verifies(&self, key: &crate::posting::PostingKey) -> bool {
        self.marketplace
            .capabilities(key.marketplace())
            .is_some_and(|can| can.verifies())
    }

    /// The policy's decision, in its `policy.decide` span: the terms to bid on, or the skip.
    fn policy_decision(&self, posting: &Posting) -> Result<BidTerms, Intent> {
        let span = debug_span!("policy.decide", decision = Empty, reasons = Empty);
        let decision = span.in_scope(|| self.policy.decide(posting, chrono::Utc::now()));
        match decision {
            Decision::Skip(reasons) => {
                span.record("decision", "skip");
                // The bounded codes (the ledger keeps the details).
                let codes: Vec<&str> = reasons.iter().map(|r| r.code()).collect();
                span.record("reasons", codes.join(",").as_str());
                Err(Intent::Skip(reasons.iter().map(|r| r.describe()).collect()))
            }
            Decision::Bid {
                amount,
                currency,
                cover_letter,
            } => {
                span.record("decision", "bid");
                Ok(BidTerms {
                    amount,
                    currency,
                    cover_letter,
                })
            }
        }
    }

    /// The scoring service's verdict on a posting the rules would bid on: `None` to bid, a skip
    /// reason, or (when it cannot answer and `on_failure = "wait"`) the outcome to wait with.
    async fn score(&self, posting: &Posting, scoring: &Scoring) -> Result<Option<String>, Outcome> {
        let span = debug_span!("scoring", result = Empty);
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
                OnScoringFailure::Wait => Err(Outcome::unavailable(Component::Scoring, &e)),
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
}

/// Bounded label of the lookup, for its span.
fn lookup_result(found: &Result<Option<LedgerEntry>, LedgerError>) -> &'static str {
    match found {
        Err(_) => "error",
        Ok(None) => "absent",
        Ok(Some(entry)) if entry.state.is_final() => "final",
        Ok(Some(entry)) if entry.sends > 0 => "sent",
        Ok(Some(_)) => "pending",
    }
}
