//! The consume loop: deliveries in, pipeline, settle; concurrency and graceful shutdown.
//!
//! Each delivery runs in its own task; the source's prefetch bounds how many are in flight. A
//! message is settled only after the pipeline returns — so only after the ledger holds its
//! outcome when it is acked. On shutdown the worker stops taking deliveries, gives in-flight ones
//! `grace` to finish, and abandons the rest *unsettled*: the broker redelivers them, nothing is
//! acked without an outcome.
//!
//! Each delivery is handled inside its `process` span (kind CONSUMER, see
//! [`telemetry`](crate::telemetry)), parented on the publisher's `traceparent` before it is first
//! entered, with the pipeline's step spans and the settlement as its children.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::Instrument;

use crate::metrics;
use crate::pipeline::{Action, Pipeline, RetryDelays};
use crate::source::{Delivery, PostingSource};
use crate::tally::Tally;
use crate::telemetry;

/// Knobs of the consume loop.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Retry delays per situation.
    pub delays: RetryDelays,
    /// Attempts after which a message that would be retried is dead-lettered instead.
    pub max_attempts: u32,
    /// Time in-flight postings get to finish after shutdown is requested.
    pub grace: Duration,
    /// Exact counts for a caller that wants them back (the demo, tests); `None` in production.
    pub tally: Option<Arc<Tally>>,
    /// The exchange deliveries come from (`amqp.exchange`): `messaging.destination.name` and the
    /// `process {destination}` span name. Low-cardinality by construction.
    pub destination: String,
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

/// Runs the consume loop until `shutdown` resolves or the source ends.
///
/// `consuming` is raised while deliveries can flow and lowered when they cannot (for `/readyz`).
pub async fn run(
    mut source: Box<dyn PostingSource>,
    pipeline: Arc<Pipeline>,
    options: WorkerOptions,
    consuming: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send,
) -> WorkerReport {
    let mut report = WorkerReport::default();
    let mut in_flight: JoinSet<bool> = JoinSet::new();
    tokio::pin!(shutdown);
    consuming.store(true, Ordering::SeqCst);
    loop {
        tokio::select! {
            // Shutdown first: once requested, take no new delivery.
            biased;
            () = &mut shutdown => {
                tracing::info!(in_flight = in_flight.len(), "Shutdown requested; no longer consuming");
                break;
            }
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                report.settled += u64::from(matches!(done, Ok(true)));
                if let Err(e) = done && e.is_panic() {
                    // The delivery was dropped unsettled: the source redelivers it.
                    tracing::error!(error = %e, "Posting task panicked; its message will be redelivered");
                }
            }
            next = source.next() => match next {
                None => {
                    tracing::warn!("Posting source ended; no longer consuming");
                    report.source_ended = true;
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Posting source error");
                }
                Some(Ok(delivery)) => {
                    report.received += 1;
                    let (pipeline, options) = (pipeline.clone(), options.clone());
                    in_flight.spawn(async move { handle(delivery, &pipeline, &options).await });
                }
            }
        }
    }
    consuming.store(false, Ordering::SeqCst);
    if let Err(e) = source.stop().await {
        tracing::warn!(error = %e, "Stopping the posting source failed");
    }
    drain(&mut in_flight, options.grace, &mut report).await;
    report
}

async fn drain(in_flight: &mut JoinSet<bool>, grace: Duration, report: &mut WorkerReport) {
    if in_flight.is_empty() {
        return;
    }
    let finish = async {
        while let Some(done) = in_flight.join_next().await {
            report.settled += u64::from(matches!(done, Ok(true)));
        }
    };
    if tokio::time::timeout(grace, finish).await.is_err() {
        report.abandoned = in_flight.len() as u64;
        tracing::warn!(
            abandoned = in_flight.len(),
            grace_ms = grace.as_millis() as u64,
            "Grace period over; leaving unfinished postings unacked for redelivery"
        );
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
    }
}

/// Runs one delivery through the pipeline and settles it, inside its `process` span. Returns
/// whether it was settled.
async fn handle(delivery: Delivery, pipeline: &Pipeline, options: &WorkerOptions) -> bool {
    // Parent and link are set inside `consumer_span`, before `instrument` first enters it.
    let span = telemetry::consumer_span(
        &options.destination,
        delivery.message_id.as_deref(),
        delivery.attempt,
        &delivery.headers,
    );
    process(delivery, pipeline, options).instrument(span).await
}

async fn process(mut delivery: Delivery, pipeline: &Pipeline, options: &WorkerOptions) -> bool {
    let _in_flight = metrics::InFlight::enter();
    let started = Instant::now();
    let (posting, outcome) = pipeline.handle(&delivery.body, &delivery.headers).await;
    let action = match outcome.action(&options.delays) {
        Action::Retry { reason, .. } if delivery.attempt >= options.max_attempts => {
            Action::DeadLetter {
                reason: "max_attempts",
                detail: format!("{} attempts; last: {reason}", delivery.attempt),
            }
        }
        action => action,
    };
    let span = tracing::Span::current();
    let marketplace = posting.as_ref().map(|p| p.key.marketplace().to_owned());
    if let Some(posting) = &posting {
        span.record("marketplace", posting.key.marketplace());
        span.record("posting_id", posting.key.posting_id());
    }
    span.record("outcome", outcome.label());
    match &action {
        Action::DeadLetter { reason, .. } => {
            span.record("otel.status_code", "error");
            span.record("error.type", *reason);
        }
        Action::Retry { reason, .. } => {
            span.record("error.type", *reason);
            // The next attempt's `process` span links back to this one.
            if let Some(traceparent) = telemetry::traceparent_of(&span) {
                delivery
                    .headers
                    .insert(telemetry::PREV_TRACEPARENT_HEADER.to_owned(), traceparent);
            }
        }
        Action::Ack => {}
    }
    metrics::observe(
        marketplace.as_deref(),
        posting.as_ref().map(|p| p.key.posting_id()),
        &outcome,
        &action,
        delivery.attempt,
        started.elapsed(),
    );
    if let Some(tally) = &options.tally {
        tally.record(&outcome, &action, started.elapsed());
    }
    let operation = match &action {
        Action::Ack => "ack",
        Action::Retry { .. } => "retry",
        Action::DeadLetter { .. } => "dead_letter",
    };
    let settle_span = tracing::info_span!(
        "settle",
        otel.name = %format_args!("{operation} {}", options.destination),
        otel.kind = "client",
        messaging.system = "rabbitmq",
        messaging.operation.type = "settle",
        messaging.operation.name = operation,
        messaging.destination.name = %options.destination,
    );
    let settled = match &action {
        Action::Ack => delivery.ack().instrument(settle_span).await,
        Action::Retry { delay, reason } => {
            delivery.retry(*delay, reason).instrument(settle_span).await
        }
        Action::DeadLetter { reason, detail } => {
            delivery
                .dead_letter(reason, detail)
                .instrument(settle_span)
                .await
        }
    };
    match settled {
        Ok(()) => true,
        Err(e) => {
            // Unsettled: the broker redelivers it; the ledger keeps the outcome idempotent.
            tracing::warn!(error = %e, outcome = outcome.label(), "Settling the message failed; it will be redelivered");
            false
        }
    }
}
