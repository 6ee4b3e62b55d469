//! The one place a processed delivery is logged and counted, so the log line and the counters
//! cannot drift (vector's habit): received, outcome, retry or dead letter, latency.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};

use crate::metrics::Handles;

use crate::pipeline::{Action, Outcome};
use crate::posting::PostingKey;

/// The series of each marketplace.
static SERIES: LazyLock<Handles<String, Arc<Market>>> = LazyLock::new(Handles::new);
/// `bidorch_pipeline_seconds`, by outcome.
static PIPELINE_SECONDS: LazyLock<Handles<&'static str, Histogram>> = LazyLock::new(Handles::new);

/// One marketplace's counters.
struct Market {
    received: Counter,
    /// `bidorch_outcomes_total`, by outcome.
    outcomes: Handles<&'static str, Counter>,
}

impl Market {
    fn new(market: &str) -> Self {
        Self {
            received: counter!("bidorch_postings_received_total", "marketplace" => market.to_owned()),
            outcomes: Handles::new(),
        }
    }
}

/// Logs and counts one processed delivery: received, outcome, retry or dead letter, latency.
/// Waits (a held lease, a pause, a not-before) are logged at DEBUG: during an outage they are
/// many and say nothing new — the pause itself is announced once by [`crate::flow`].
pub fn observe(
    key: Option<&PostingKey>,
    outcome: &Outcome,
    action: &Action,
    attempt: u32,
    elapsed: Duration,
) {
    let market = key.map_or("unknown", PostingKey::marketplace);
    let posting_id = key.map_or("-", PostingKey::posting_id);
    let label = outcome.label();
    let series = SERIES.get(market, || {
        (market.to_owned(), Arc::new(Market::new(market)))
    });
    series.received.increment(1);
    series
        .outcomes
        .get(&label, || {
            let outcomes = counter!("bidorch_outcomes_total", "marketplace" => market.to_owned(), "outcome" => label);
            (label, outcomes)
        })
        .increment(1);
    PIPELINE_SECONDS
        .get(&label, || {
            (
                label,
                histogram!("bidorch_pipeline_seconds", "outcome" => label),
            )
        })
        .record(elapsed.as_secs_f64());
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    match action {
        Action::Ack => match outcome {
            Outcome::Placed { bid_id, via } => tracing::info!(
                marketplace = market, posting_id, attempt, elapsed_ms,
                bid_id = bid_id.as_deref().unwrap_or("-"), via = ?via, "Bid placed"
            ),
            Outcome::Rejected { status } => tracing::warn!(
                marketplace = market,
                posting_id,
                attempt,
                elapsed_ms,
                status,
                "Bid rejected by the marketplace"
            ),
            _ => tracing::info!(
                marketplace = market,
                posting_id,
                attempt,
                elapsed_ms,
                outcome = label,
                "Posting settled"
            ),
        },
        Action::Retry {
            delay,
            reason,
            counts,
        } => {
            counter!("bidorch_retries_total", "reason" => *reason).increment(1);
            let detail = match outcome {
                Outcome::Unavailable { error, .. } => error.as_str(),
                Outcome::Transient { reason, .. } => reason.as_str(),
                _ => "",
            };
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            if *counts {
                tracing::info!(
                    marketplace = market,
                    posting_id,
                    attempt,
                    elapsed_ms,
                    reason,
                    detail,
                    delay_ms,
                    "Posting retried later"
                );
            } else {
                tracing::debug!(
                    marketplace = market,
                    posting_id,
                    attempt,
                    elapsed_ms,
                    reason,
                    detail,
                    delay_ms,
                    "Posting waits"
                );
            }
        }
        Action::DeadLetter { reason, detail } => {
            counter!("bidorch_dead_letters_total", "reason" => *reason).increment(1);
            tracing::warn!(
                marketplace = market, posting_id, attempt, reason, detail = %detail,
                "Message dead-lettered"
            );
        }
    }
}
