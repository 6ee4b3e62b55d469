//! Prometheus metrics: the recorder, and the one place each outcome is logged and counted.
//!
//! Names follow `bidorch_<name>_<unit>[_total]`; labels are bounded (marketplace, outcome,
//! reason) — never a posting id. [`observe`] emits a posting's log line and its counters together
//! so the two cannot drift.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::pipeline::{Action, Outcome};

/// Seconds; covers sub-millisecond lock calls up to slow marketplace calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder once and returns its handle (idempotent: tests and
/// the demo may call it many times; a recorder installed by someone else yields a detached one).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("static bucket list is non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("A metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Renders the Prometheus text exposition.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// Counts a posting in flight for as long as it lives.
pub struct InFlight(());

impl InFlight {
    /// Increments `bidorch_in_flight` until dropped.
    pub fn enter() -> Self {
        gauge!("bidorch_in_flight").increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!("bidorch_in_flight").decrement(1.0);
    }
}

/// Logs and counts one processed delivery: received, outcome, retry or dead letter, latency.
pub fn observe(
    marketplace: Option<&str>,
    posting_id: Option<&str>,
    outcome: &Outcome,
    action: &Action,
    attempt: u32,
    elapsed: Duration,
) {
    let market = marketplace.unwrap_or("unknown").to_owned();
    let label = outcome.label();
    counter!("bidorch_postings_received_total", "marketplace" => market.clone()).increment(1);
    counter!("bidorch_outcomes_total", "marketplace" => market.clone(), "outcome" => label)
        .increment(1);
    histogram!("bidorch_pipeline_seconds", "outcome" => label).record(elapsed.as_secs_f64());
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    let posting_id = posting_id.unwrap_or("-");
    match action {
        Action::Ack => match outcome {
            Outcome::Placed { bid_id, via } => tracing::info!(
                marketplace = %market, posting_id, attempt, elapsed_ms, bid_id = bid_id.as_deref().unwrap_or("-"),
                via = ?via, "Bid placed"
            ),
            Outcome::Rejected { status } => tracing::warn!(
                marketplace = %market, posting_id, attempt, elapsed_ms, status, "Bid rejected by the marketplace"
            ),
            _ => {
                tracing::info!(marketplace = %market, posting_id, attempt, elapsed_ms, outcome = label, "Posting settled")
            }
        },
        Action::Retry { delay, reason } => {
            counter!("bidorch_retries_total", "reason" => *reason).increment(1);
            let detail = match outcome {
                Outcome::Unavailable { error, .. } => error.as_str(),
                Outcome::Transient { reason, .. } => reason.as_str(),
                _ => "",
            };
            tracing::info!(
                marketplace = %market, posting_id, attempt, elapsed_ms, reason, detail,
                delay_ms = delay.as_millis() as u64, "Posting retried later"
            );
        }
        Action::DeadLetter { reason, detail } => {
            counter!("bidorch_dead_letters_total", "reason" => *reason).increment(1);
            tracing::warn!(
                marketplace = %market, posting_id, attempt, reason, detail = %detail,
                "Message dead-lettered"
            );
        }
    }
}
