//! One trace per bid: a delivery carrying `traceparent` with trace id T yields worker spans in
//! trace T (the `process` CONSUMER span a child of the publisher's span), and the sandbox
//! marketplace receives a `traceparent` in trace T whose parent is the worker's `bid` step.
//! Embedded backends only (in-process broker, in-memory SQLite, memory locks, the sandbox over
//! real HTTP); spans go through the real tracing-opentelemetry layer into the OTel SDK.
//!
//! Each test installs its subscriber with `set_default` (thread-local) on a current-thread
//! runtime, so the worker's, the sandbox's and the lease watchdog's tasks all report to it and no
//! global state is shared between tests. One test runs `bidorch worker` processes with export on:
//! every call of a posting is in its first attempt's trace.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use bidorch::lock::MemoryLockStore;
use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::posting::PostingKey;
use bidorch::telemetry::PREV_TRACEPARENT_HEADER;
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;
use support::telemetry::{DESTINATION, Embedded, attr, headers, otel_subscriber, posting};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUBLISHER_SPAN: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn trace_id_of(traceparent: &str) -> &str {
    traceparent
        .split('-')
        .nth(1)
        .expect("traceparent has a trace id")
}

fn parent_id_of(traceparent: &str) -> &str {
    traceparent
        .split('-')
        .nth(2)
        .expect("traceparent has a parent id")
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn process_name() -> String {
    format!("process {DESTINATION}")
}

async fn embedded() -> Embedded {
    Embedded::start(&["upwork"], Arc::new(MemoryLockStore::new())).await
}

#[tokio::test]
async fn worker_spans_and_the_marketplace_call_continue_the_publishers_trace() {
    let (subscriber, collected) = otel_subscriber();
    let _default = tracing::subscriber::set_default(subscriber);
    let app = embedded().await;
    app.broker.publish(
        posting("upwork", "job_trace_1", "900"),
        headers(&[("traceparent", TRACEPARENT)]),
    );

    app.run_until_drained(4).await;

    let spans = collected.spans();
    // The consumer span: a child of the publisher's span, per the messaging conventions.
    let process = named(&spans, &process_name());
    assert_eq!(process.len(), 1, "one process span: {:?}", names(&spans));
    let process = process[0];
    assert_eq!(process.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(process.parent_span_id.to_string(), PUBLISHER_SPAN);
    assert!(process.parent_span_is_remote);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(
        attr(process, "messaging.system").as_deref(),
        Some("bidorch.memory")
    );
    assert_eq!(
        attr(process, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attr(process, "messaging.destination.name").as_deref(),
        Some(DESTINATION)
    );
    assert_eq!(attr(process, "posting_id").as_deref(), Some("job_trace_1"));
    assert_eq!(attr(process, "outcome").as_deref(), Some("placed"));

    // Every worker span of this delivery is in trace T. (A first delivery has no `ledger.lookup`:
    // its claim reads the row.)
    let trace = TraceId::from_hex(TRACE_ID).unwrap();
    for step in [
        "pipeline",
        "lease.acquire",
        "ledger.claim",
        "policy.decide",
        "bid",
        "ledger.finish",
        "lease.release",
        "POST",
        "ack postings",
    ] {
        let found = named(&spans, step);
        assert!(!found.is_empty(), "no {step} span in {:?}", names(&spans));
        for span in found {
            assert_eq!(span.span_context.trace_id(), trace, "{step} is in trace T");
        }
    }
    // No span name carries the posting id.
    for span in &spans {
        assert!(
            !span.name.contains("job_trace_1"),
            "id in span name {}",
            span.name
        );
    }

    // The marketplace got a traceparent in trace T whose parent is the worker's `bid` step.
    let bids = app
        .sandbox
        .bids(&PostingKey::new("upwork", "job_trace_1").unwrap());
    assert_eq!(bids.len(), 1);
    let sent = bids[0]
        .traceparent
        .as_deref()
        .expect("bid carried traceparent");
    assert_eq!(trace_id_of(sent), TRACE_ID);
    let bid_step = named(&spans, "bid")[0];
    assert_eq!(
        parent_id_of(sent),
        bid_step.span_context.span_id().to_string()
    );
    let client = named(&spans, "POST")[0];
    assert_eq!(client.span_kind, SpanKind::Client);
    assert_eq!(client.parent_span_id, bid_step.span_context.span_id());
    assert_eq!(
        app.sandbox.stats().postings["upwork:job_trace_1"]
            .last_traceparent
            .as_deref(),
        Some(sent)
    );
}

#[tokio::test]
async fn a_foreign_clients_traceparent_and_tracestate_are_continued() {
    let (subscriber, collected) = otel_subscriber();
    let _default = tracing::subscriber::set_default(subscriber);
    let app = embedded().await;
    // As a Python or Java publisher's OTel SDK writes them (W3C example values).
    let foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    app.broker.publish(
        posting("upwork", "job_foreign", "900"),
        headers(&[("traceparent", foreign), ("tracestate", tracestate)]),
    );

    app.run_until_drained(4).await;

    let spans = collected.spans();
    let process = named(&spans, &process_name())[0];
    assert_eq!(
        process.span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(process.parent_span_id.to_string(), "b7ad6b7169203331");
    let bid = &app
        .sandbox
        .bids(&PostingKey::new("upwork", "job_foreign").unwrap())[0];
    assert_eq!(
        trace_id_of(bid.traceparent.as_deref().unwrap()),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(bid.tracestate.as_deref(), Some(tracestate));
}

#[tokio::test]
async fn a_retried_message_links_its_new_attempt_to_the_previous_one() {
    let (subscriber, collected) = otel_subscriber();
    let _default = tracing::subscriber::set_default(subscriber);
    let app = embedded().await;
    // The first bid call fails transiently: the message is retried.
    app.sandbox
        .fail_next(bidorch::marketplace::sandbox::Fault::unavailable());
    app.broker.publish(
        posting("upwork", "job_retry", "900"),
        headers(&[("traceparent", TRACEPARENT)]),
    );

    app.run_until_drained(4).await;

    let spans = collected.spans();
    let mut attempts = named(&spans, &process_name());
    attempts.sort_by_key(|s| attr(s, "bidorch.attempt"));
    assert_eq!(attempts.len(), 2, "{:?}", names(&spans));
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(attr(first, "outcome").as_deref(), Some("transient"));
    assert_eq!(attr(second, "outcome").as_deref(), Some("placed"));
    // Both attempts stay children of the publisher's span, in trace T.
    for attempt in [first, second] {
        assert_eq!(attempt.span_context.trace_id().to_string(), TRACE_ID);
        assert_eq!(attempt.parent_span_id.to_string(), PUBLISHER_SPAN);
    }
    // The second links to the first.
    assert!(first.links.is_empty());
    assert_eq!(second.links.len(), 1);
    let link = &second.links[0];
    assert_eq!(link.span_context.span_id(), first.span_context.span_id());
    assert_eq!(link.span_context.trace_id(), first.span_context.trace_id());
    assert!(
        link.attributes
            .iter()
            .any(|kv| kv.key.as_str() == "bidorch.link" && kv.value.as_str() == "previous_attempt")
    );
    assert_eq!(app.sandbox.stats().bids_created, 1);
}

#[tokio::test]
async fn a_publishers_previous_attempt_header_is_not_trusted() {
    let (subscriber, collected) = otel_subscriber();
    let _default = tracing::subscriber::set_default(subscriber);
    let app = embedded().await;
    let previous = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
    app.broker.publish(
        posting("upwork", "job_forged", "900"),
        headers(&[
            ("traceparent", TRACEPARENT),
            (PREV_TRACEPARENT_HEADER, previous),
        ]),
    );

    app.run_until_drained(4).await;

    let spans = collected.spans();
    assert!(named(&spans, &process_name())[0].links.is_empty());
}

#[tokio::test]
async fn without_tracing_export_the_incoming_traceparent_is_passed_on() {
    // No OTel layer at all: the worker cannot make spans of its own, so it forwards the
    // publisher's context unchanged and the marketplace still joins the publisher's trace.
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry());
    let app = embedded().await;
    app.broker.publish(
        posting("upwork", "job_plain", "900"),
        headers(&[("traceparent", TRACEPARENT), ("tracestate", "vendor=1")]),
    );

    app.run_until_drained(4).await;

    let bid = &app
        .sandbox
        .bids(&PostingKey::new("upwork", "job_plain").unwrap())[0];
    assert_eq!(bid.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(bid.tracestate.as_deref(), Some("vendor=1"));
}

#[tokio::test]
async fn a_delivery_without_a_valid_traceparent_starts_its_own_trace() {
    let (subscriber, collected) = otel_subscriber();
    let _default = tracing::subscriber::set_default(subscriber);
    let app = embedded().await;
    app.broker.publish(
        posting("upwork", "job_garbage", "900"),
        headers(&[("traceparent", "not-a-traceparent")]),
    );

    app.run_until_drained(4).await;

    let spans = collected.spans();
    let process = named(&spans, &process_name())[0];
    assert_eq!(
        process.parent_span_id,
        opentelemetry::trace::SpanId::INVALID,
        "a root span"
    );
    let bid = &app
        .sandbox
        .bids(&PostingKey::new("upwork", "job_garbage").unwrap())[0];
    let sent = bid.traceparent.as_deref().expect("a fresh traceparent");
    assert_eq!(
        trace_id_of(sent),
        process.span_context.trace_id().to_string()
    );
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

/// Every marketplace call of a posting carries the trace of its first attempt, whichever of its
/// events, attempts or workers makes it: 3 `bidorch worker` processes with tracing export on,
/// 2 events of each posting (each its own trace), answers lost and 503s so that postings are sent
/// again by later attempts — often another event's, on another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_of_a_posting_runs_in_its_first_attempts_trace() {
    let sandbox = SandboxOptions {
        lose_rate: 0.2,
        fail_rate: 0.1,
        seed: 7,
        ..SandboxOptions::default()
    };
    // Export on (to a collector that is not there: spans are made and dropped at export), and
    // `freelancer` on its API: its lost answers are looked up, and a lookup is a call too.
    let collector = format!("http://{}", support::process::free_addr());
    let export = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        (
            "BIDORCH__MARKETPLACES__FREELANCER__API",
            "freelancer".to_owned(),
        ),
    ];
    let Some(mut scenario) =
        support::scenario::Scenario::start("tracecont", sandbox, &export).await
    else {
        return;
    };
    for name in ["a", "b", "c"] {
        scenario.spawn_worker(name);
    }
    scenario.wait_ready().await;
    let load = support::scenario::api_load(120, 2, true);
    // Each event its own trace, as `bidorch publish` starts one per event.
    let events: Vec<_> = load
        .events
        .iter()
        .map(|e| {
            let traceparent = format!(
                "00-{:032x}-{:016x}-01",
                fastrand::u128(1..),
                fastrand::u64(1..)
            );
            e.clone().with_header("traceparent", &traceparent)
        })
        .collect();
    scenario.publish(&events).await;
    scenario.wait_settled(&load, Duration::from_secs(180)).await;
    scenario.assert_promise(&load).await;

    let stats = scenario.sandbox.stats();
    let mut resent = 0;
    for key in &load.eligible {
        let posting = &stats.postings[key];
        resent += u64::from(posting.requests > 1);
        let row = scenario
            .ledger
            .ledger
            .lookup(&bidorch::inspect::parse_key(key).expect("a valid key"))
            .await
            .expect("ledger answers")
            .expect("the posting's row");
        let kept = row
            .trace_parent
            .as_deref()
            .and_then(|tp| tp.split('-').nth(1))
            .expect("the row keeps its first attempt's trace")
            .to_owned();
        assert_eq!(
            posting.trace_ids,
            std::collections::BTreeSet::from([kept]),
            "{key}: {} requests",
            posting.requests
        );
    }
    assert!(resent > 0, "some postings were sent more than once");
    assert!(stats.lookups > 0, "some lost answers were looked up");
    scenario.stop().await;
}

/// The worker's layering — the OTel layer under its filter next to the JSON log layer under an
/// INFO filter — keeps a DEBUG step span in its process span's trace.
#[test]
fn a_step_span_stays_in_the_process_spans_trace_beside_the_log_layer() {
    use opentelemetry::trace::TraceContextExt as _;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let spans = support::telemetry::CollectSpans::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("x"))
        .with_filter(bidorch::telemetry::trace_filter());
    let log = json_subscriber::layer()
        .with_writer(std::io::sink)
        .flatten_event(true)
        .with_current_span(false)
        .flatten_span_list_on_top_level(true)
        .boxed()
        .with_filter(tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::registry()
        .with(Some(otel))
        .with(log)
        .with(bidorch::telemetry::TraceExport);
    tracing::subscriber::with_default(subscriber, || {
        let h = headers(&[("traceparent", TRACEPARENT)]);
        let (span, trace_id) =
            bidorch::telemetry::consumer_span("rabbitmq", "postings", Some("m"), 1, None, &h);
        let _e = span.enter();
        let child = tracing::debug_span!(target: "bidorch::pipeline", "pipeline");
        let cx = child.context();
        let child_trace = cx.span().span_context().trace_id().to_string();
        assert_eq!(trace_id, TRACE_ID);
        assert_eq!(child_trace, TRACE_ID);
    });
}
