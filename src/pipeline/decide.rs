//! The decision: what this attempt wants done with the posting — from the ledger for a posting
//! seen before (final, or a request already sent), else the policy's verdict and the scoring
//! service's.

use std::ops::ControlFlow;
use std::sync::Arc;

use tracing::{Instrument, debug_span, field::Empty};

use super::{AttemptContext, Component, Outcome, Pipeline, Step, stored_request};
use crate::config::OnScoringFailure;
use crate::ledger::{Intent, LedgerEntry, LedgerError};
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
                Ok(Some(entry)) if entry.sends > 0 => return ControlFlow::Continue(Intent::Resend),
                Ok(_) => {}
            }
        }
        match (self.policy_intent(posting), &self.scoring) {
            (Intent::Bid(request), Some(scoring)) => match self.score(posting, scoring).await {
                Ok(None) => ControlFlow::Continue(Intent::Bid(request)),
                Ok(Some(reason)) => ControlFlow::Continue(Intent::Skip(vec![reason])),
                Err(outcome) => ControlFlow::Break(outcome),
            },
            (intent, _) => ControlFlow::Continue(intent),
        }
    }

    /// The policy's decision as an intent, in its `policy.decide` span.
    fn policy_intent(&self, posting: &Posting) -> Intent {
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
