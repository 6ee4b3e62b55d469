//! Interop on real RabbitMQ, Redis and PostgreSQL: postings published by Python `pika`
//! (`tests/interop/publish_pika.py`, a client that is not ours) are bid on exactly once each by an
//! in-process worker, and the publisher's W3C `traceparent` reaches the marketplace.
//!
//! Trace context, as `src/telemetry.rs` does it: with an OpenTelemetry layer installed the worker
//! continues the publisher's trace with spans of its own, so the marketplace receives the
//! publisher's trace id under the worker's `bid` span; without one (no exporter configured and
//! no layer) the worker cannot make spans, and passes the incoming `traceparent` on unchanged.
//! Both are tested: the first with a tracer provider that exports nowhere.
//!
//! Needs `python3` with `pika` (`python3 -m pip install pika`); skipped with a printed reason
//! without it, failed when `BIDORCH_REQUIRE_SERVICES` is set.

use crate::support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bidorch::config::Settings;
use bidorch::ledger::{LedgerReports, LedgerState};
use bidorch::marketplace::sandbox::{Sandbox, SandboxOptions};
use bidorch::posting::PostingKey;
use serde_json::json;
use support::queue::{Cleanup, Inspector, eventually};

const TOKEN: &str = "interop-token";
const POSTINGS: usize = 12;
const COPIES: usize = 2;
const WAIT: Duration = Duration::from_secs(60);

/// Whether `python3` can import `module`; otherwise skips (false) or, under
/// `BIDORCH_REQUIRE_SERVICES`, fails.
fn python_with(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let why = format!("python3 with `{module}` is unavailable (python3 -m pip install {module})");
    support::skip(&why)
}

async fn services_available() -> bool {
    support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await
        && python_with("pika")
}

/// One worker and a naive sandbox (every request a new bid) on names unique to the test.
struct Harness {
    settings: Settings,
    sandbox: Sandbox,
    ledger: Arc<dyn LedgerReports>,
    stop: tokio::sync::watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
    _cleanup: Cleanup,
}

impl Harness {
    async fn start() -> Self {
        let (sandbox, url) = support::serve_sandbox(SandboxOptions {
            token: Some(TOKEN.to_owned()),
            honour_idempotency: false,
            ..SandboxOptions::default()
        })
        .await;
        let names = support::unique("interop");
        let settings = support::run_settings(
            &names,
            &url,
            &[("BIDORCH__DATABASE__MAX_CONNECTIONS", "4".into())],
        );
        let system = support::worker_system(&settings, TOKEN, None).await;
        let ledger = system.ports().reports.clone();
        // The topology exists before pika publishes (`mandatory` would refuse otherwise).
        support::queue::declare_topology(&settings.amqp).await;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(async move {
            system
                .run_worker(false, async move {
                    let _ = stopped.wait_for(|v| *v).await;
                })
                .await
                .expect("worker starts");
        });
        Self {
            _cleanup: Cleanup(settings.amqp.clone()),
            settings,
            sandbox,
            ledger,
            stop,
            worker,
        }
    }

    /// Waits (bounded) until every posting has a final ledger row and the queues are empty.
    async fn wait_until_done(&self, postings: usize) {
        let inspector = Inspector::connect().await;
        let ledger = self.ledger.clone();
        let amqp = self.settings.amqp.clone();
        eventually(WAIT, "every posting final and the queues drained", || {
            let (ledger, amqp, inspector) = (ledger.clone(), amqp.clone(), &inspector);
            async move {
                let finals: u64 = ledger
                    .counts_by_state()
                    .await
                    .unwrap()
                    .iter()
                    .filter(|(s, _)| s.is_final())
                    .map(|(_, n)| n)
                    .sum();
                let mut waiting = inspector.ready(&amqp.queue).await;
                for tier in &amqp.retry_tiers {
                    waiting += inspector.ready(&amqp.retry_queue(*tier)).await;
                }
                finals == postings as u64 && waiting == 0
            }
        })
        .await;
        let _ = inspector.connection.close(200, "OK".into()).await;
    }

    async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.worker.await;
        support::drop_schema(&self.settings.database.schema).await;
        support::delete_redis_prefix(&self.settings.redis.key_prefix).await;
    }
}

/// A posting sent by pika, with the trace its publisher started.
struct Sent {
    key: PostingKey,
    trace_id: String,
    span_id: String,
}

impl Sent {
    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// `POSTINGS` postings over two marketplaces, each with its own trace.
fn postings() -> Vec<Sent> {
    (0..POSTINGS)
        .map(|n| {
            let marketplace = if n % 2 == 0 { "upwork" } else { "freelancer" };
            let hex = uuid::Uuid::new_v4().simple().to_string();
            Sent {
                key: PostingKey::new(marketplace, &format!("py_{n:03}")).unwrap(),
                trace_id: hex,
                span_id: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
            }
        })
        .collect()
}

/// Publishes each posting `COPIES` times (interleaved) with `publish_pika.py`; returns how many
/// messages pika reported confirmed.
async fn publish_with_pika(settings: &Settings, sent: &[Sent]) -> usize {
    let mut lines = String::new();
    for copy in 0..COPIES {
        for s in sent {
            let line = json!({
                "event": {
                    // A fresh event id per copy: a re-publication, as a retrying producer makes.
                    "event_id": format!("{}-{copy}", uuid::Uuid::new_v4()),
                    "marketplace": s.key.marketplace(),
                    "posting_id": s.key.posting_id(),
                    "title": "Port a Python service to Rust",
                    "budget": {"min": "400", "max": 1200.50, "currency": "USD", "kind": "fixed"},
                    "skills": ["rust", "python"],
                },
                "headers": {"traceparent": s.traceparent(), "tracestate": "py=1"},
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
    }
    let (url, exchange) = (support::amqp_url(), settings.amqp.exchange.clone());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/publish_pika.py");
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .args([script, &url, &exchange])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "publish_pika.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        summary["published"].as_u64().unwrap() as usize
    })
    .await
    .unwrap()
}

/// (version, trace id, parent id, flags) of a `traceparent`.
fn parts(traceparent: &str) -> (String, String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {traceparent:?}");
    (p[0].into(), p[1].into(), p[2].into(), p[3].into())
}

/// Runs the scenario; returns, per posting, the publisher's context and the `traceparent` the
/// marketplace received with the (single) bid.
async fn run_scenario() -> Vec<(Sent, String)> {
    let h = Harness::start().await;
    let sent = postings();

    // Act: pika publishes every posting twice.
    let published = publish_with_pika(&h.settings, &sent).await;
    assert_eq!(published, POSTINGS * COPIES);
    h.wait_until_done(POSTINGS).await;

    // Assert: exactly one bid per posting, on a marketplace that would have taken a second.
    let stats = h.sandbox.stats();
    assert!(stats.duplicates.is_empty(), "{:?}", stats.duplicates);
    assert_eq!(stats.bids_created, POSTINGS as u64);
    let counts: BTreeMap<LedgerState, u64> = h
        .ledger
        .counts_by_state()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(counts.get(&LedgerState::Placed), Some(&(POSTINGS as u64)));
    let inspector = Inspector::connect().await;
    assert_eq!(
        inspector.ready(&h.settings.amqp.dead_letter_queue()).await,
        0
    );
    let _ = inspector.connection.close(200, "OK".into()).await;
    let mut received = Vec::new();
    for s in sent {
        let bids = h.sandbox.bids(&s.key);
        assert_eq!(bids.len(), 1, "{}: bids {bids:?}", s.key);
        let traceparent = bids[0]
            .traceparent
            .clone()
            .unwrap_or_else(|| panic!("{}: the bid carried no traceparent", s.key));
        received.push((s, traceparent));
    }
    h.finish().await;
    received
}

#[tokio::test]
async fn pika_postings_are_bid_once_each_and_the_traceparent_is_passed_on_without_otel() {
    if !services_available().await {
        return;
    }
    // A subscriber without an OTel layer, as in a worker without OTEL_EXPORTER_OTLP_ENDPOINT.
    // Thread-local on this current-thread runtime, like the other test's: with no subscriber at
    // all, tracing would cache "no interest" in the pipeline's span callsites process-wide and
    // the concurrently running OTel test would lose its spans.
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry());
    for (sent, traceparent) in run_scenario().await {
        assert_eq!(
            traceparent,
            sent.traceparent(),
            "{}: the publisher's context unchanged",
            sent.key
        );
    }
}

#[tokio::test]
async fn pika_postings_are_bid_once_each_in_the_publishers_trace_with_otel() {
    if !services_available().await {
        return;
    }
    // An OTel layer whose provider exports nowhere: spans get real contexts, nothing is sent.
    // Filtered as a worker with export on filters it (the pipeline's steps are DEBUG spans).
    // Thread-local default on this current-thread runtime, so worker and sandbox tasks use it.
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(bidorch::telemetry::trace_filter())
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bidorch-interop")))
        .with(bidorch::telemetry::TraceExport);
    let _default = tracing::subscriber::set_default(subscriber);

    for (sent, traceparent) in run_scenario().await {
        let (version, trace_id, parent_id, flags) = parts(&traceparent);
        assert_eq!(version, "00", "{}", sent.key);
        assert_eq!(
            trace_id, sent.trace_id,
            "{}: the publisher's trace",
            sent.key
        );
        assert_ne!(
            parent_id, sent.span_id,
            "{}: the worker's own span is the caller",
            sent.key
        );
        assert_eq!(flags, "01", "{}: still sampled", sent.key);
    }
}
