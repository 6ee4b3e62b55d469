//! Prometheus metrics: the recorder, the names shared by several modules, and the catalogue.
//!
//! Names follow `bidorch_<name>_<unit>[_total]`; labels are bounded (marketplace, outcome,
//! reason, result, backend) — never a posting id. A processed delivery's log line and counters are
//! emitted together by the worker (`worker/observe.rs`), so the two cannot drift. [`CATALOGUE`]
//! lists every name this process exports with its meaning; [`install`] registers those
//! descriptions, so `/metrics` carries `# HELP`.

use std::sync::OnceLock;

use metrics::gauge;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
/// Counter: our bid exists at the marketplace (2xx/409) but the ledger row had become final
/// otherwise.
pub const MISMATCHES: &str = "bidorch_ledger_mismatches_total";
/// Gauge: 1 while a dependency (`lock_store`, `ledger`, or a marketplace) is paused, by reason.
pub const PAUSED: &str = "bidorch_paused";
/// Gauge: 1 while a marketplace (`*`: all) is paused by hand (`bidorch pause`), else 0.
pub const MANUAL_PAUSE: &str = "bidorch_manual_pause";
/// Gauge: credits a marketplace's budget allows in the current period.
pub const BUDGET_CREDITS: &str = "bidorch_budget_credits";
/// Gauge: credits a marketplace's budget has left in the current period.
pub const BUDGET_REMAINING: &str = "bidorch_budget_remaining";
/// Gauge: ledger rows by `state` (the planner's estimate on a large PostgreSQL table).
pub const LEDGER_ROWS: &str = "bidorch_ledger_rows";
/// Gauge: age in seconds of the oldest final row's outcome (what retention deletes next).
pub const LEDGER_OLDEST: &str = "bidorch_ledger_oldest_row_seconds";
/// Gauge: `ledger.retention` in seconds (what the oldest row's age is compared with).
pub const LEDGER_RETENTION: &str = "bidorch_ledger_retention_seconds";
/// Counter: rows retention deleted, by `table` (`postings`, `attempts`, `other`).
pub const LEDGER_PRUNED: &str = "bidorch_ledger_pruned_total";
/// Counter: automatic reconcile runs' postings, by `outcome`.
pub const AUTO_RECONCILED: &str = "bidorch_reconcile_auto_total";
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
        "Pipeline outcomes: poison, duplicate, lock_held, lock_store, ledger, marketplace, scoring, deferred, not_yet, marketplace_paused, rate_limited, lookup_wait, skipped, placed, transient, rejected, lease_lost, superseded.",
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
        MISMATCHES,
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
        PAUSED,
        Kind::Gauge,
        &["dependency", "reason"],
        "1 while a dependency (lock_store, ledger, marketplace:NAME) is paused, by reason.",
    ),
    (
        MANUAL_PAUSE,
        Kind::Gauge,
        &["marketplace"],
        "1 while a marketplace (`*`: every one) is paused by hand with `bidorch pause`, 0 once resumed.",
    ),
    (
        BUDGET_CREDITS,
        Kind::Gauge,
        &["marketplace"],
        "Credits the marketplace's budget allows in the current period ([bidding.budget]).",
    ),
    (
        BUDGET_REMAINING,
        Kind::Gauge,
        &["marketplace"],
        "Credits the marketplace's budget has left in the current period.",
    ),
    (
        LEDGER_ROWS,
        Kind::Gauge,
        &["state"],
        "Ledger rows by state (estimated from the planner's statistics on a large table).",
    ),
    (
        LEDGER_OLDEST,
        Kind::Gauge,
        &[],
        "Age of the oldest final ledger row's outcome, in seconds (retention deletes it next).",
    ),
    (
        LEDGER_RETENTION,
        Kind::Gauge,
        &[],
        "ledger.retention, in seconds.",
    ),
    (
        LEDGER_PRUNED,
        Kind::Counter,
        &["table"],
        "Rows deleted by ledger.retention: postings, their attempts, other (audit, spend, workers).",
    ),
    (
        AUTO_RECONCILED,
        Kind::Counter,
        &["outcome"],
        "Unresolved sends the workers' automatic reconcile settled, by outcome.",
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
        "Marketplace call latency (bids and lookups), by classified result: placed, replay, conflict, rate_limited, transient, unauthorized, rejected, lookup_found, lookup_not_found, lookup_gone, lookup_unanswered.",
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

/// Handles of series every posting moves, each registered once its label values are first seen.
///
/// `counter!` and its kin look the whole key up in the recorder on every call (labels allocated
/// and hashed, a lock taken): 4-5 k instructions per posting of the worker's 221 k. A handle is
/// kept only once this process's recorder is installed; before that (or in a process that never
/// installs it) each call registers as the macros do, so no handle stays detached.
pub(crate) struct Handles<K, H> {
    /// foldhash, not std's SipHash: a lookup per series per posting, keys from configuration.
    kept: std::sync::RwLock<std::collections::HashMap<K, H, foldhash::fast::RandomState>>,
}

impl<K: std::hash::Hash + Eq, H: Clone> Handles<K, H> {
    pub(crate) fn new() -> Self {
        Self {
            kept: std::sync::RwLock::new(std::collections::HashMap::default()),
        }
    }

    /// The handle of the series `key` names, registered by `register` the first time.
    pub(crate) fn get<Q>(&self, key: &Q, register: impl FnOnce() -> (K, H)) -> H
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if HANDLE.get().is_none() {
            return register().1;
        }
        if let Some(handle) = self.kept.read().ok().and_then(|m| m.get(key).cloned()) {
            return handle;
        }
        let (key, handle) = register();
        if let Ok(mut kept) = self.kept.write() {
            kept.entry(key).or_insert_with(|| handle.clone());
        }
        handle
    }
}

/// A label-less gauge's handle (see [`Handles`]).
fn kept_gauge(name: &'static str) -> metrics::Gauge {
    static KEPT: std::sync::LazyLock<Handles<&'static str, metrics::Gauge>> =
        std::sync::LazyLock::new(Handles::new);
    KEPT.get(name, || (name, gauge!(name)))
}

/// One count in a label-less gauge (`bidorch_postings_in_flight`, `bidorch_leases_held`) for as
/// long as it lives.
pub struct Counted(metrics::Gauge);

impl Counted {
    /// Increments gauge `name` until dropped.
    pub fn new(name: &'static str) -> Self {
        let gauge = kept_gauge(name);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_lists_exactly_the_outcomes_there_are() {
        let (_, _, _, help) = CATALOGUE
            .iter()
            .find(|(name, ..)| *name == "bidorch_outcomes_total")
            .expect("the outcomes counter is catalogued");
        let listed: Vec<&str> = help
            .trim_start_matches("Pipeline outcomes: ")
            .trim_end_matches('.')
            .split(", ")
            .collect();
        assert_eq!(listed, crate::pipeline::Outcome::LABELS);
    }
}
