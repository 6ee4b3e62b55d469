//! The consume loop: deliveries in, pipeline, settle; concurrency and graceful shutdown.
//!
//! Each delivery runs in its own task; the source's prefetch bounds how many are in flight. A
//! message is settled only after the pipeline returns — so only after the ledger holds its
//! outcome when it is acked. On shutdown the worker stops taking deliveries, gives in-flight ones
//! `grace` to finish, and abandons the rest *unsettled*: the broker redelivers them, nothing is
//! acked without an outcome.
//!
//! Flow control (see [`crate::flow`]): when a posting finds the lock store or the ledger
//! unreachable, the worker closes its [`Gate`], pauses the source (no new deliveries; the broker
//! keeps them), sends what it already holds to the wait queue unattempted, probes the dependency
//! with backoff in the background, and resumes consuming when it answers.
//!
//! Each delivery is handled ([`handle`]) inside its `process` span (kind CONSUMER, see
//! [`telemetry`](crate::telemetry)), parented on the publisher's `traceparent` before it is first
//! entered, with the pipeline's step spans and the settlement as its children.

mod handle;
mod observe;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use futures_util::FutureExt as _;
use tokio::task::JoinSet;

use crate::config::{Settings, SourceKind};
use crate::flow::{Dependency, Gate};
use crate::pipeline::{Pipeline, RetryRules};
use crate::source::PostingSource;
use crate::tally::Tally;

/// Knobs of the consume loop.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Retry delays per situation, and the attempts after which a message is parked.
    pub retry: RetryRules,
    /// The smallest retry tier: a delivery back less than half of it before its not-before is
    /// worked on (waiting another tier would overshoot more).
    pub smallest_tier: Duration,
    /// Time in-flight postings get to finish after shutdown is requested.
    pub grace: Duration,
    /// Exact counts for a caller that wants them back (the demo, tests); `None` in production.
    pub tally: Option<Arc<Tally>>,
    /// The exchange deliveries come from (`amqp.exchange`): `messaging.destination.name` and the
    /// `process {destination}` span name. Low-cardinality by construction.
    pub destination: String,
    /// `messaging.system` of the spans: `rabbitmq`, or `bidorch.memory` for the in-process queue.
    pub messaging_system: &'static str,
}

impl WorkerOptions {
    /// The consume loop's options from `settings` (no tally).
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            retry: RetryRules {
                lock_held: settings.worker.retry_lock_held,
                unavailable: settings.worker.retry_unavailable,
                transient: settings.worker.retry_transient,
                max_attempts: settings.amqp.max_attempts,
                retry_budget: settings.amqp.retry_budget,
            },
            smallest_tier: settings
                .amqp
                .retry_tiers
                .first()
                .copied()
                .unwrap_or(std::time::Duration::from_secs(1)),
            grace: settings.worker.shutdown_grace,
            tally: None,
            destination: settings.amqp.exchange.clone(),
            messaging_system: match settings.source.kind {
                SourceKind::Amqp => "rabbitmq",
                SourceKind::Memory => "bidorch.memory",
            },
        }
    }
}

/// What a finished worker run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Deliveries taken from the source.
    pub received: u64,
    /// Deliveries settled (acked, retried or dead-lettered).
    pub settled: u64,
    /// In-flight deliveries abandoned unsettled at the end of the grace period.
    pub abandoned: u64,
    /// Whether the source ended by itself (rather than by shutdown).
    pub source_ended: bool,
}

/// What the worker shows the operations endpoint. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Raised while deliveries can flow, lowered when they cannot (paused, stopped).
    pub consuming: Arc<AtomicBool>,
    /// Closed while the lock store or the ledger is unreachable.
    pub gate: Gate,
}

impl Status {
    fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::CONSUMING).set(f64::from(u8::from(consuming)));
    }
}

/// Runs the consume loop until `shutdown` resolves or the source ends.
pub async fn run(
    mut source: Box<dyn PostingSource>,
    pipeline: Arc<Pipeline>,
    options: WorkerOptions,
    status: Status,
    shutdown: impl Future<Output = ()> + Send,
) -> WorkerReport {
    let mut report = WorkerReport::default();
    // Postings' tasks report back on their own (a settled count, an unreachable dependency, a
    // panic logged) rather than through the loop: a finished task then costs the loop nothing,
    // where joining it woke the loop and re-polled every branch once per posting. Finished tasks
    // are reaped whenever a delivery arrives, and the rest awaited at shutdown.
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let settled = Arc::new(AtomicU64::new(0));
    let (unreachable_tx, mut unreachable_rx) =
        tokio::sync::mpsc::unbounded_channel::<(Dependency, String)>();
    let mut probes: JoinSet<()> = JoinSet::new();
    let mut gate = status.gate.watch();
    let mut paused = false;
    tokio::pin!(shutdown);
    status.set_consuming(true);
    loop {
        // Follow the gate: paused while any dependency is down, consuming again once all answer.
        let open = status.gate.is_open();
        if open == paused {
            let switched = if open {
                source.resume().await
            } else {
                source.pause().await
            };
            if let Err(e) = switched {
                tracing::warn!(error = %crate::error::Chain(&e), "Pausing or resuming the posting source failed");
            }
            paused = !open;
            status.set_consuming(open);
        }
        tokio::select! {
            // Shutdown first: once requested, take no new delivery.
            biased;
            () = &mut shutdown => {
                reap(&mut in_flight);
                tracing::info!(in_flight = in_flight.len(), "Shutdown requested; no longer consuming");
                break;
            }
            () = gate.changed() => {}
            Some((dependency, detail)) = unreachable_rx.recv() => {
                if status.gate.pause(dependency, &detail) {
                    probes.spawn(probe(pipeline.clone(), status.gate.clone(), dependency));
                }
            }
            next = source.next() => match next {
                None => {
                    tracing::warn!("Posting source ended; no longer consuming");
                    report.source_ended = true;
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %crate::error::Chain(&e), "Posting source error");
                }
                Some(Ok(delivery)) => {
                    report.received += 1;
                    let (pipeline, options, gate) = (pipeline.clone(), options.clone(), status.gate.clone());
                    // Counted in the process's report to operators while it is worked on.
                    let working = pipeline.pause_board().map(crate::control::PauseBoard::working);
                    // Boxed: the task then moves a pointer, not the whole pipeline's state
                    // machine (kilobytes, copied at each hand-over into and out of the task).
                    let (settled, unreachable) = (settled.clone(), unreachable_tx.clone());
                    in_flight.spawn(Box::pin(async move {
                        // A panic drops the delivery unsettled (the source hands it back), and
                        // is logged now rather than when the task is reaped.
                        let handled = AssertUnwindSafe(handle::handle(delivery, &pipeline, &options, &gate))
                            .catch_unwind()
                            .await;
                        drop(working);
                        match handled {
                            Ok(handled) => {
                                settled.fetch_add(u64::from(handled.settled), Ordering::Relaxed);
                                if let Some(dependency) = handled.unreachable {
                                    // The loop outlives every task it awaits: the send cannot fail.
                                    let _ = unreachable.send(dependency);
                                }
                            }
                            Err(panic) => tracing::error!(
                                error = panic_message(panic.as_ref()),
                                "Posting task panicked; its message will be redelivered"
                            ),
                        }
                    }));
                    reap(&mut in_flight);
                }
            }
        }
    }
    probes.abort_all();
    status.set_consuming(false);
    if let Err(e) = source.stop().await {
        tracing::warn!(error = %crate::error::Chain(&e), "Stopping the posting source failed");
    }
    reap(&mut in_flight);
    drain(&mut in_flight, options.grace, &mut report).await;
    report.settled = settled.load(Ordering::Relaxed);
    report
}

/// Joins the postings' tasks that have finished (each has reported for itself).
fn reap(in_flight: &mut JoinSet<()>) {
    while in_flight.try_join_next().is_some() {}
}

/// What a panic said, if it said it in words.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Asks a paused dependency, with growing, jittered pauses, until it answers; then opens the
/// gate for it. Aborted when the worker stops.
async fn probe(pipeline: Arc<Pipeline>, gate: Gate, dependency: Dependency) {
    let mut pauses = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        tokio::time::sleep(pauses.next().unwrap_or(Duration::from_secs(10))).await;
        match pipeline.probe(dependency).await {
            Ok(()) => {
                gate.resume(dependency);
                return;
            }
            Err(e) => {
                tracing::debug!(dependency = dependency.label(), error = %e, "Still unreachable")
            }
        }
    }
}

async fn drain(in_flight: &mut JoinSet<()>, grace: Duration, report: &mut WorkerReport) {
    if in_flight.is_empty() {
        return;
    }
    let finish = async { while in_flight.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, finish).await.is_err() {
        in_flight.abort_all();
        // Abandoned: the tasks the abort stopped, not any that finished meanwhile (those have
        // counted themselves settled, or not).
        let mut abandoned = 0u64;
        while let Some(done) = in_flight.join_next().await {
            abandoned += u64::from(done.is_err_and(|e| e.is_cancelled()));
        }
        report.abandoned = abandoned;
        tracing::warn!(
            abandoned,
            grace_ms = grace.as_millis() as u64,
            "Grace period over; left unfinished postings unacked for redelivery"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panics_message_is_read_whether_literal_or_formatted() {
        let literal = std::panic::catch_unwind(|| panic!("plain words")).unwrap_err();
        let formatted = std::panic::catch_unwind(|| panic!("posting {}", 7)).unwrap_err();
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "plain words");
        assert_eq!(panic_message(formatted.as_ref()), "posting 7");
        assert_eq!(panic_message(other.as_ref()), "a panic without a message");
    }
}
