//! The remote scoring service's step: asked about a posting the rules would bid on, in its own
//! `scoring` span, and what its answer (or its silence) means under `scoring.on_failure`.

use std::sync::Arc;

use tracing::{Instrument, debug_span, field::Empty};

use super::{Component, Outcome, Pipeline};
use crate::config::OnScoringFailure;
use crate::posting::Posting;
use crate::scorer::Scorer;

/// The scoring service and what to make of its answers.
pub struct Scoring {
    pub scorer: Arc<dyn Scorer>,
    pub threshold: f64,
    pub on_failure: OnScoringFailure,
}

impl Pipeline {
    /// The scoring service's verdict on a posting the rules would bid on: `None` to bid, a skip
    /// reason, or (when it cannot answer and `on_failure = "wait"`) the outcome to wait with.
    pub(super) async fn score(
        &self,
        posting: &Posting,
        scoring: &Scoring,
    ) -> Result<Option<String>, Outcome> {
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
}
