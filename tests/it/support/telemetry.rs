//! An embedded bidorch for observability tests: the in-process broker, an in-memory SQLite ledger,
//! a lock store of the test's choosing and the sandbox marketplace over real HTTP on port 0,
//! run by the real `worker::run`. Also a span collector for the OTel SDK.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bidorch::app::LedgerPorts;
use bidorch::config::{BiddingSettings, MarketplaceSettings};
use bidorch::ledger::{
    AttemptRecord, Batched, Claim, ClaimRequest, Fenced, Finish, LedgerBackend, LedgerEntry,
    LedgerError, LedgerReports, LedgerState, SqliteBidLedger,
};
use bidorch::lock::LockStore;
use bidorch::marketplace::HttpMarketplace;
use bidorch::marketplace::sandbox::{self, Sandbox, SandboxOptions};
use bidorch::pipeline::{Pipeline, RetryRules};
use bidorch::policy::Policy;
use bidorch::posting::PostingKey;
use bidorch::source::{MemoryPostingSource, MemoryQueue};
use bidorch::worker::{self, WorkerOptions, WorkerReport};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tracing::{Instrument, Span};

pub const TOKEN: &str = "obs-token";
/// The exchange name the worker reports as its messaging destination.
pub const DESTINATION: &str = "postings";

/// One embedded deployment: broker, ledger, locks, pipeline and a sandbox marketplace.
pub struct Embedded {
    pub broker: MemoryBroker,
    pub sandbox: Sandbox,
    pub ledger: LedgerPorts,
    pub pipeline: Arc<Pipeline>,
    stop_sandbox: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Embedded {
    /// Starts the sandbox on 127.0.0.1:0 and builds a pipeline over `locks` for `marketplaces`.
    pub async fn start(marketplaces: &[&str], locks: Arc<dyn LockStore>) -> Self {
        let sandbox = Sandbox::new(SandboxOptions {
            token: Some(TOKEN.to_owned()),
            ..SandboxOptions::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(sandbox::serve(listener, sandbox.clone(), async {
            let _ = stopped.await;
        }));
        let settings: BTreeMap<String, MarketplaceSettings> = marketplaces
            .iter()
            .map(|m| {
                (
                    (*m).to_owned(),
                    MarketplaceSettings::new(
                        url::Url::parse(&format!("http://{addr}/{m}")).unwrap(),
                        "BIDORCH_OBS_TOKEN",
                    ),
                )
            })
            .collect();
        let marketplace = HttpMarketplace::new(&settings, Duration::from_secs(10), |_| {
            Some(TOKEN.to_owned())
        })
        .unwrap();
        let sqlite = SqliteBidLedger::connect_and_migrate("sqlite::memory:")
            .await
            .unwrap();
        let backend = Arc::new(Detached(sqlite.clone()));
        let ledger = LedgerPorts {
            ledger: Arc::new(Batched::new(backend.clone())),
            reports: backend,
            controls: Arc::new(sqlite),
        };
        let policy = Policy::new(&BiddingSettings {
            min_budget: Decimal::new(100, 0).into(),
            blocked_keywords: vec!["crypto".to_owned()],
            daily_bid_cap: 0,
            cover_letter: "Hello! About \"{{ title }}\".".to_owned(),
            ..BiddingSettings::default()
        })
        .expect("a valid policy");
        let pipeline = Arc::new(Pipeline::new(
            ledger.ledger.clone(),
            locks,
            Arc::new(marketplace),
            policy,
            Duration::from_secs(10),
        ));
        Self {
            broker: MemoryBroker::new(),
            sandbox,
            ledger,
            pipeline,
            stop_sandbox: Some(stop),
        }
    }

    /// Worker options with short retry delays.
    pub fn options(&self) -> WorkerOptions {
        WorkerOptions {
            retry: RetryRules {
                lock_held: Duration::from_millis(20),
                unavailable: Duration::from_millis(20),
                transient: Duration::from_millis(20),
                max_attempts: 5,
                retry_budget: Duration::from_secs(3600),
            },
            smallest_tier: Duration::from_millis(20),
            grace: Duration::from_secs(5),
            tally: None,
            destination: DESTINATION.to_owned(),
            messaging_system: "bidorch.memory",
        }
    }

    /// Runs one worker (taking `prefetch` deliveries at a time) until every published message
    /// is acked or dead-lettered, then shuts it down and returns its report.
    pub async fn run_until_drained(&self, prefetch: usize) -> WorkerReport {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(worker::run(
            Box::new(self.broker.consumer(prefetch)),
            self.pipeline.clone(),
            self.options(),
            bidorch::worker::Status::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.broker.counts().outstanding() > 0 {
            assert!(
                Instant::now() < deadline,
                "messages not drained: {:?}",
                self.broker.counts()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(());
        worker.await.unwrap()
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_sandbox.take() {
            let _ = stop.send(());
        }
    }
}

/// A root span to run SQLite calls in (a disabled span would leave the caller's span current,
/// so it has a target that [`bidorch::telemetry::trace_filter`] takes).
fn detached() -> Span {
    tracing::info_span!(target: "bidorch::test", parent: None, "test.sqlite")
}

/// The SQLite ledger, called outside the caller's span.
///
/// sqlx-sqlite hands `Span::current()` to its connection's worker thread with each command, and
/// that thread may drop the last handle of the span. tracing-subscriber then closes the *parent*
/// through the dropping thread's default subscriber — the global one, which in these tests (each
/// with a thread-local `set_default`) is none — so the pipeline and `process` spans would
/// sometimes never end. With a global subscriber, as the binary installs, this cannot happen; in
/// the tests the ledger's own SQL runs in a root span of its own instead of our step spans.
struct Detached(SqliteBidLedger);

#[async_trait::async_trait]
impl LedgerBackend for Detached {
    async fn lookup_many(
        &self,
        keys: &[PostingKey],
    ) -> Result<Vec<Option<LedgerEntry>>, LedgerError> {
        self.0.lookup_many(keys).instrument(detached()).await
    }
    async fn steps_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
        claims: &[ClaimRequest],
    ) -> Result<(Vec<Fenced>, Vec<Claim>), LedgerError> {
        self.0
            .steps_many(finishes, claims)
            .instrument(detached())
            .await
    }
    async fn health(&self) -> Result<(), LedgerError> {
        LedgerBackend::health(&self.0).instrument(detached()).await
    }
}

#[async_trait::async_trait]
impl LedgerReports for Detached {
    async fn unresolved(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        self.0
            .unresolved(before, limit)
            .instrument(detached())
            .await
    }
    async fn count_unresolved(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        self.0.count_unresolved(before).instrument(detached()).await
    }
    async fn attempts(&self, key: &PostingKey) -> Result<Vec<AttemptRecord>, LedgerError> {
        self.0.attempts(key).instrument(detached()).await
    }
    async fn counts_by_state(&self) -> Result<Vec<(LedgerState, u64)>, LedgerError> {
        self.0.counts_by_state().instrument(detached()).await
    }
    async fn placed_since(&self, since: DateTime<Utc>) -> Result<Vec<(String, u64)>, LedgerError> {
        self.0.placed_since(since).instrument(detached()).await
    }
    async fn search(
        &self,
        search: &bidorch::ledger::Search,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        self.0.search(search).instrument(detached()).await
    }
    async fn budget_spent(
        &self,
        marketplace: &str,
        period_start: chrono::NaiveDate,
    ) -> Result<rust_decimal::Decimal, LedgerError> {
        self.0
            .budget_spent(marketplace, period_start)
            .instrument(detached())
            .await
    }
    async fn prune(
        &self,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<Option<bidorch::ledger::Pruned>, LedgerError> {
        self.0.prune(before, batch).instrument(detached()).await
    }
    async fn prunable(
        &self,
        before: DateTime<Utc>,
    ) -> Result<bidorch::ledger::Pruned, LedgerError> {
        self.0.prunable(before).instrument(detached()).await
    }
    async fn size(&self) -> Result<bidorch::ledger::LedgerSize, LedgerError> {
        self.0.size().instrument(detached()).await
    }
}

/// A posting event body; `max` is the budget's maximum in USD.
pub fn posting(marketplace: &str, posting_id: &str, max: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "marketplace": marketplace,
        "posting_id": posting_id,
        "title": "Build a Rust worker",
        "budget": {"min": 10, "max": max, "currency": "USD", "kind": "fixed"},
    }))
    .unwrap()
}

/// Headers as a source delivers them (lower-case names).
pub fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Collects finished spans in memory (the SDK's own in-memory exporter sits behind its
/// `testing` feature, which we do not enable).
#[derive(Clone, Debug, Default)]
pub struct CollectSpans(pub Arc<Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for CollectSpans {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        self.0.lock().unwrap().extend(batch);
        std::future::ready(Ok(()))
    }
}

impl CollectSpans {
    /// The spans finished so far.
    pub fn spans(&self) -> Vec<opentelemetry_sdk::trace::SpanData> {
        self.0.lock().unwrap().clone()
    }
}

/// A subscriber exporting spans to a fresh [`CollectSpans`] through the OTel layer, filtered as
/// a worker with export on filters them ([`bidorch::telemetry::trace_filter`]).
pub fn otel_subscriber() -> (impl tracing::Subscriber + Send + Sync, CollectSpans) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let spans = CollectSpans::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    // The OTel layer is the only one here, so its filter is the whole subscriber's.
    let subscriber = tracing_subscriber::registry()
        .with(bidorch::telemetry::trace_filter())
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bidorch-test")))
        .with(bidorch::telemetry::TraceExport);
    (subscriber, spans)
}

/// The string value of attribute `key` on `span`, if set.
pub fn attr(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The embedded queue with the small surface these tests use.
#[derive(Clone)]
pub struct MemoryBroker(MemoryQueue);

/// Messages of a [`MemoryBroker`] not yet acked or parked.
pub struct Outstanding(usize);

impl Outstanding {
    pub fn outstanding(&self) -> usize {
        self.0
    }
}

impl std::fmt::Debug for Outstanding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} outstanding", self.0)
    }
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self(MemoryQueue::new(
            bidorch::source::memory::DEFAULT_DELIVERY_LIMIT,
        ))
    }

    pub fn publish(&self, body: Vec<u8>, headers: std::collections::BTreeMap<String, String>) {
        self.0.publish_with(body, None, headers);
    }

    pub fn consumer(&self, prefetch: usize) -> MemoryPostingSource {
        self.0.subscribe(prefetch)
    }

    pub fn counts(&self) -> Outstanding {
        let s = self.0.stats();
        Outstanding(s.ready + s.unacked + s.delayed)
    }
}
