//! One delivery: parse, decide whether it may be worked on now, run the pipeline, then settle
//! and release the posting's lease side by side (the ledger already has the outcome).
//!
//! A delivery is not worked on — and counts no attempt — while the worker's gate is closed (a
//! dependency is down) or before its `not-before`: it goes straight back to the wait queue. The
//! outcome is logged and counted once the settlement is done, so a "Bid placed" line never
//! precedes a settlement that failed.

use std::time::{Instant, SystemTime};

use tracing::Instrument;

use super::WorkerOptions;
use crate::flow::{Dependency, Gate};
use crate::metrics;
use crate::pipeline::{Action, AttemptContext, Envelope, Outcome, Pipeline, Processed};
use crate::posting::{Posting, PostingError};
use crate::source::Delivery;
use crate::telemetry;

/// What handling one delivery amounted to, for the consume loop.
pub(super) struct Handled {
    /// Whether the delivery was settled (acked, retried or dead-lettered).
    pub settled: bool,
    /// A dependency the pipeline found unreachable, and what it said: the loop pauses for it.
    pub unreachable: Option<(Dependency, String)>,
}

/// Runs one delivery inside its `process` span (parent and link set before it is entered).
pub(super) async fn handle(
    delivery: Delivery,
    pipeline: &Pipeline,
    options: &WorkerOptions,
    gate: &Gate,
) -> Handled {
    // Read first: the span then names the posting from the start.
    let parsed = pipeline.parse(&delivery.body);
    let key = parsed
        .as_ref()
        .ok()
        .map(|p| (p.key.marketplace(), p.key.posting_id()));
    let (span, trace_id) = telemetry::consumer_span(
        options.messaging_system,
        &options.destination,
        delivery.message_id.as_deref(),
        delivery.attempt,
        key,
        &delivery.headers,
    );
    process(delivery, parsed, pipeline, options, gate, trace_id)
        .instrument(span)
        .await
}

/// The outcome for a delivery that must not be worked on now, if any.
fn held_back(delivery: &Delivery, options: &WorkerOptions, gate: &Gate) -> Option<Outcome> {
    if let Some(paused) = gate.first_paused() {
        return Some(Outcome::Deferred { dependency: paused });
    }
    let remaining = delivery
        .not_before?
        .duration_since(SystemTime::now())
        .ok()?;
    (remaining > options.smallest_tier / 2).then_some(Outcome::NotYet { remaining })
}

/// Whether this message may have been worked on before: the broker redelivered it, or it came
/// back through our wait queues (only then does it carry a trusted reason or attempt).
fn seen_before(delivery: &Delivery) -> bool {
    delivery.redelivered
        || delivery.attempt > 1
        || delivery.headers.contains_key(crate::source::REASON_HEADER)
}

async fn process(
    mut delivery: Delivery,
    parsed: Result<Posting, PostingError>,
    pipeline: &Pipeline,
    options: &WorkerOptions,
    gate: &Gate,
    trace_id: String,
) -> Handled {
    let _in_flight = metrics::Counted::new(metrics::IN_FLIGHT);
    let started = Instant::now();
    let span = tracing::Span::current();
    let (posting, processed) = match parsed {
        // Poison never waits: it is parked at once.
        Err(e) => (None, Processed::without_lease(Outcome::Poison(e))),
        Ok(posting) => match held_back(&delivery, options, gate) {
            Some(outcome) => (Some(posting), Processed::without_lease(outcome)),
            None => {
                let trace_parent =
                    telemetry::attempt_trace_parent(&span, &delivery.headers, &trace_id);
                let context = AttemptContext {
                    event_id: posting.event_id.clone(),
                    trace_id: Some(trace_id),
                    trace_parent: Some(trace_parent),
                    trace_headers: telemetry::trace_headers_of(&delivery.headers),
                    seen_before: seen_before(&delivery),
                };
                let processed = pipeline.run(&posting, &context).await;
                (Some(posting), processed)
            }
        },
    };
    let outcome = &processed.outcome;
    let envelope = Envelope {
        attempt: delivery.attempt,
        age: SystemTime::now()
            .duration_since(delivery.first_seen)
            .unwrap_or_default(),
    };
    let action = outcome.action(&envelope, &options.retry);
    record_on_span(&span, outcome, &action);
    if matches!(action, Action::Retry { .. })
        && let Some(traceparent) = telemetry::traceparent_of(&span)
    {
        // The next attempt's `process` span links back to this one.
        delivery
            .headers
            .insert(telemetry::PREV_TRACEPARENT_HEADER.to_owned(), traceparent);
    }
    // Side by side: the ledger has the outcome, so the lease protects nothing and only keeps
    // duplicates waiting; and an ack may wait some milliseconds to go out with others.
    let (settled, outcome) = tokio::join!(settle(delivery, &action, options), processed.release());
    let unreachable = match &outcome {
        Outcome::Unavailable { component, error } => {
            component.dependency().map(|d| (d, error.clone()))
        }
        _ => None,
    };
    let ok = settled.is_ok();
    match settled {
        Ok(()) => {
            super::observe::observe(
                posting.as_ref().map(|p| &p.key),
                &outcome,
                &action,
                envelope.attempt,
                started.elapsed(),
            );
            if let Some(tally) = &options.tally {
                tally.record(&outcome, &action, started.elapsed());
            }
        }
        Err(e) => {
            // Unsettled: the broker redelivers it; the ledger keeps the outcome idempotent.
            tracing::warn!(
                error = %crate::error::Chain(&e),
                outcome = outcome.label(),
                "Settling the message failed; it will be redelivered"
            );
        }
    }
    Handled {
        settled: ok,
        unreachable,
    }
}

fn record_on_span(span: &tracing::Span, outcome: &Outcome, action: &Action) {
    span.record("outcome", outcome.label());
    match action {
        Action::DeadLetter { reason, .. } => {
            span.record("otel.status_code", "error");
            span.record("error.type", *reason);
        }
        Action::Retry { reason, .. } => {
            span.record("error.type", *reason);
        }
        Action::Ack => {}
    }
}

/// Settles `delivery` as `action` says, inside its `settle` span.
async fn settle(
    delivery: Delivery,
    action: &Action,
    options: &WorkerOptions,
) -> Result<(), crate::source::SourceError> {
    let operation = match action {
        Action::Ack => "ack",
        Action::Retry { .. } => "retry",
        Action::DeadLetter { .. } => "dead_letter",
    };
    let span = tracing::debug_span!(
        "settle",
        otel.name = %format_args!("{operation} {}", options.destination),
        otel.kind = "client",
        messaging.system = options.messaging_system,
        messaging.operation.type = "settle",
        messaging.operation.name = operation,
        messaging.destination.name = %options.destination,
    );
    match action {
        Action::Ack => delivery.ack().instrument(span).await,
        Action::Retry {
            delay,
            reason,
            counts,
        } => {
            delivery
                .retry(*delay, reason, *counts)
                .instrument(span)
                .await
        }
        Action::DeadLetter { reason, detail } => {
            delivery.dead_letter(reason, detail).instrument(span).await
        }
    }
}
