//! Prometheus metrics: the recorder, and the one place each outcome is logged and counted.
//!
//! Names follow `bidorch_<name>_<unit>[_total]`; labels are bounded (marketplace, outcome,
//! reason, result, backend) — never a posting id. [`observe`] emits a posting's log line and its
//! counters together so the two cannot drift. [`CATALOGUE`] lists every name this process exports
//! with its meaning; [`install`] registers those descriptions, so `/metrics` carries `# HELP`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::pipeline::{Action, Outcome};
use crate::posting::PostingKey;

/// Seconds; covers sub-millisecond lock calls up to slow marketplace calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Gauge: postings being processed right now (taken from the source, not yet settled).
pub const IN_FLIGHT: &str = "bidorch_postings_in_flight";
/// Gauge: leases held by this process (renewing, or being released).
pub const LEASES_HELD: &str = "bidorch_leases_held";
/// Gauge: postings whose bid request was sent longer ago than `reconcile.older_than` and never
/// recorded (settle them with `bidorch reconcile`).
pub const UNRESOLVED_SENDS: &str = "bidorch_ledger_unresolved_sends";
/// Gauge: 1 while the worker is consuming (not paused, not stopped), else 0.
pub const CONSUMING: &str = "bidorch_consuming";
/// Gauge: 1 while `/readyz` would answer 200, else 0 (evaluated at each scrape).
pub const READY: &str = "bidorch_ready";

/// Kind of an exported metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric bidorch exports: name, kind, labels, meaning. Emitted from this module, from
/// [`lock::metrics`](crate::lock::metrics) (lock counters), the lease watchdog (leases held) and
/// the HTTP marketplace client (call latency).
pub const CATALOGUE: &[(&str, Kind, &[&str], &str)] = &[
    (
        "bidorch_postings_received_total",
        Kind::Counter,
        &["marketplace"],
        "Deliveries processed (marketplace `unknown` when the body is poison).",
    ),
    (
        "bidorch_outcomes_total",
        Kind::Counter,
        &["marketplace", "outcome"],
        "Pipeline outcomes: placed, duplicate, skipped, rejected, lock_held, transient, lease_lost, superseded, redis, ledger, marketplace, poison.",
    ),
    (
        "bidorch_retries_total",
        Kind::Counter,
        &["reason"],
        "Messages sent back for a later attempt, by reason.",
    ),
    (
        "bidorch_dead_letters_total",
        Kind::Counter,
        &["reason"],
        "Messages parked in the dead-letter queue, by reason.",
    ),
    (IN_FLIGHT, Kind::Gauge, &[], "Postings being processed now."),
    (
        LEASES_HELD,
        Kind::Gauge,
        &[],
        "Leases held by this process now.",
    ),
    (
        UNRESOLVED_SENDS,
        Kind::Gauge,
        &[],
        "Bids sent longer ago than reconcile.older_than and never recorded (run bidorch reconcile).",
    ),
    (
        crate::pipeline::MISMATCHES,
        Kind::Counter,
        &["marketplace"],
        "Our bid exists at the marketplace but the ledger row became final otherwise.",
    ),
    (
        CONSUMING,
        Kind::Gauge,
        &[],
        "1 while the worker takes deliveries (not paused, not stopped).",
    ),
    (
        READY,
        Kind::Gauge,
        &[],
        "1 while /readyz would answer 200 (evaluated at each scrape).",
    ),
    (
        crate::flow::PAUSED,
        Kind::Gauge,
        &["dependency", "reason"],
        "1 while a dependency (lock_store, ledger, marketplace:NAME) is paused, by reason.",
    ),
    (
        "bidorch_pipeline_seconds",
        Kind::Histogram,
        &["outcome"],
        "Time from taking a delivery to its outcome (before settling).",
    ),
    (
        "bidorch_marketplace_request_seconds",
        Kind::Histogram,
        &["marketplace", "result"],
        "Marketplace bid call latency, by classified result.",
    ),
    (
        "bidorch_lock_acquire_seconds",
        Kind::Histogram,
        &["backend"],
        "Time one lease acquisition attempt takes to answer.",
    ),
    (
        "bidorch_lock_attempts_total",
        Kind::Counter,
        &["backend"],
        "Lease acquisition attempts (original `lock_attempts`).",
    ),
    (
        "bidorch_lock_successes_total",
        Kind::Counter,
        &["backend"],
        "Leases won (original `lock_successes`).",
    ),
    (
        "bidorch_lock_conflicts_total",
        Kind::Counter,
        &["backend"],
        "Attempts that found the lease held elsewhere (original `lock_conflicts`).",
    ),
    (
        "bidorch_lock_timeouts_total",
        Kind::Counter,
        &["backend"],
        "Waiting acquisitions that gave up (original `lock_timeouts`).",
    ),
    (
        "bidorch_redis_errors_total",
        Kind::Counter,
        &["backend"],
        "Lock store calls that could not be answered (original `redis_errors`).",
    ),
];

fn describe() {
    for &(name, kind, _, help) in CATALOGUE {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help)
            }
        }
    }
}

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
            describe();
            // Label-less gauges exist from the start (at 0 unless already moved), so a
            // dashboard shows 0 rather than "no data" before the first posting.
            gauge!(IN_FLIGHT).increment(0.0);
            gauge!(LEASES_HELD).increment(0.0);
            gauge!(CONSUMING).increment(0.0);
            gauge!(UNRESOLVED_SENDS).increment(0.0);
            gauge!(READY).increment(0.0);
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
    /// Increments `bidorch_postings_in_flight` until dropped.
    pub fn enter() -> Self {
        gauge!(IN_FLIGHT).increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(IN_FLIGHT).decrement(1.0);
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
    counter!("bidorch_postings_received_total", "marketplace" => market.to_owned()).increment(1);
    counter!("bidorch_outcomes_total", "marketplace" => market.to_owned(), "outcome" => label)
        .increment(1);
    histogram!("bidorch_pipeline_seconds", "outcome" => label).record(elapsed.as_secs_f64());
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
