//! `bidorch demo`: the whole system on one machine, in seconds, checked.
//!
//! Starts the sandbox marketplace in-process (real HTTP on loopback), generates realistic
//! postings ([`generate`]), runs several concurrent workers over them and prints a
//! [`DemoReport`]. The embedded backends are the in-process queue, the in-memory lock store and
//! a SQLite ledger; `--backend real` runs the same demo on the configured RabbitMQ, Redis and
//! PostgreSQL, under names unique to the run, removed afterwards.

mod generate;
mod real;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{BiddingSettings, MarketplaceSettings, Settings};
use crate::ledger::{BidLedger, LedgerError, SqliteBidLedger};
use crate::lock::{LockStore, MemoryLockStore};
use crate::marketplace::sandbox::{self, Sandbox, SandboxOptions, SandboxStats};
use crate::marketplace::{HttpMarketplace, Marketplace, MarketplaceError};
use crate::pipeline::Pipeline;
use crate::policy::Policy;
use crate::source::{MemoryQueue, SourceError};
use crate::tally::Tally;
use crate::worker::{self, WorkerOptions};

pub use self::generate::{DemoInput, generate};
pub use self::report::DemoReport;

/// Which backends the demo runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoBackend {
    /// In-process queue, in-memory locks, SQLite ledger: nothing to install.
    Embedded,
    /// The configured RabbitMQ, Redis and PostgreSQL.
    Real,
}

/// Demo knobs (the `bidorch demo` flags).
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub workers: usize,
    pub postings: usize,
    pub duplication: usize,
    pub poison: usize,
    pub seed: u64,
    pub backend: DemoBackend,
    /// Show a progress bar on standard error.
    pub progress: bool,
    /// Run the sandbox without honouring idempotency keys, so any duplicate that got past the
    /// ledger and the lease shows up as a second bid (the strictest check of those layers).
    pub naive_marketplace: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            workers: 4,
            postings: 10_000,
            duplication: 3,
            poison: 10,
            seed: 42,
            backend: DemoBackend::Embedded,
            progress: true,
            naive_marketplace: false,
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("sandbox marketplace: {0}")]
    Sandbox(#[source] std::io::Error),
    #[error("marketplace client: {0}")]
    Marketplace(#[from] MarketplaceError),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("lock store: {0}")]
    Lock(#[from] crate::lock::LockError),
    #[error("broker: {0}")]
    Source(#[from] SourceError),
    #[error("publishing: {0}")]
    Publish(String),
    #[error("the run did not finish within {0:?}: {1}")]
    Stalled(Duration, String),
}

/// Token the in-process sandbox and the demo's client share.
const DEMO_TOKEN: &str = "demo-token";

/// The sandbox, served on an ephemeral loopback port until dropped.
struct RunningSandbox {
    sandbox: Sandbox,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningSandbox {
    async fn start(options: &DemoOptions) -> Result<Self, DemoError> {
        let sandbox = Sandbox::new(SandboxOptions {
            token: Some(DEMO_TOKEN.to_owned()),
            honour_idempotency: !options.naive_marketplace,
            ..SandboxOptions::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(DemoError::Sandbox)?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(DemoError::Sandbox)?
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(sandbox::serve(listener, sandbox.clone(), async {
            let _ = stopped.await;
        }));
        Ok(Self {
            sandbox,
            url,
            stop: Some(stop),
        })
    }

    /// The demo's marketplaces, all served by this sandbox.
    fn marketplaces(&self, template: &Settings) -> BTreeMap<String, MarketplaceSettings> {
        let like = template.marketplaces.values().next();
        generate::MARKETPLACES
            .iter()
            .map(|m| {
                let base_url = url::Url::parse(&format!("{}/{m}", self.url))
                    .expect("a loopback URL with a plain path parses");
                let settings = MarketplaceSettings {
                    base_url,
                    token_env: "BIDORCH_DEMO_TOKEN".to_owned(),
                    timeout: like.map_or(Duration::from_secs(5), |l| l.timeout),
                    connect_timeout: like.map_or(Duration::from_secs(2), |l| l.connect_timeout),
                };
                ((*m).to_owned(), settings)
            })
            .collect()
    }

    fn client(&self, template: &Settings) -> Result<Arc<dyn Marketplace>, DemoError> {
        let client = HttpMarketplace::new(&self.marketplaces(template), |_| {
            Some(DEMO_TOKEN.to_owned())
        })?;
        Ok(Arc::new(client))
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn demo_policy() -> Policy {
    Policy::new(&BiddingSettings {
        min_budget: generate::MIN_BUDGET.into(),
        blocked_keywords: generate::BLOCKED.iter().map(|s| (*s).to_owned()).collect(),
        daily_bid_cap: 0,
        cover_letter: "Hello! I would love to help with \"{title}\".".to_owned(),
    })
}

fn progress_bar(total: u64, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} messages settled ({per_sec}) {msg}",
        )
        .expect("static template is valid"),
    );
    bar
}

/// Runs the demo and returns its report; the caller decides the exit code from
/// [`DemoReport::is_correct`].
pub async fn run(settings: &Settings, options: &DemoOptions) -> Result<DemoReport, DemoError> {
    match options.backend {
        DemoBackend::Embedded => run_embedded(settings, options).await,
        DemoBackend::Real => real::run(settings, options).await,
    }
}

async fn run_embedded(settings: &Settings, options: &DemoOptions) -> Result<DemoReport, DemoError> {
    let input = generate(
        options.postings,
        options.duplication,
        options.poison,
        options.seed,
    );
    let sandbox = RunningSandbox::start(options).await?;
    let marketplace = sandbox.client(settings)?;
    // A throw-away SQLite file in WAL mode: readers (most duplicates end at the first ledger
    // check) run in parallel with the writer, which an in-memory database cannot do.
    let db = TempDb::new(options.seed);
    let sqlite = SqliteBidLedger::connect_with(&db.url(), 8).await?;
    sqlite.migrate().await?;
    let ledger: Arc<dyn BidLedger> = Arc::new(sqlite.clone());
    let locks: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    let pipeline = Arc::new(Pipeline::new(
        ledger.clone(),
        locks,
        marketplace,
        demo_policy(),
        settings.lock.ttl,
    ));
    let broker = MemoryQueue::new(settings.amqp.delivery_limit);
    let tally = Arc::new(Tally::default());
    let worker_options = WorkerOptions {
        tally: Some(tally.clone()),
        delays: crate::pipeline::RetryDelays {
            lock_held: Duration::from_millis(20),
            unavailable: Duration::from_millis(200),
            transient: Duration::from_millis(50),
        },
        ..crate::runtime::worker_options(settings)
    };

    let started = Instant::now();
    for body in &input.messages {
        broker.publish(body.clone());
    }
    let prefetch = usize::from(settings.amqp.prefetch);
    let mut fleet = Fleet::default();
    for _ in 0..options.workers.max(1) {
        fleet.spawn(
            Box::new(broker.subscribe(prefetch)),
            pipeline.clone(),
            &worker_options,
        );
    }
    let bar = progress_bar(input.messages.len() as u64, options.progress);
    wait_until_drained(&bar, Duration::from_millis(50), || async {
        let counts = broker.stats();
        Ok(match counts.ready + counts.unacked + counts.delayed {
            0 => Drain::Done,
            _ => Drain::Pending {
                position: counts.acked + counts.dead as u64,
                state: format!("{counts:?}"),
            },
        })
    })
    .await?;
    let elapsed = started.elapsed();
    fleet.stop().await;
    let mut dead_letters = BTreeMap::new();
    for parked in broker.dead_letters() {
        *dead_letters.entry(parked.reason).or_default() += 1;
    }
    let report = report(
        "embedded",
        options,
        &input,
        elapsed,
        &sandbox.sandbox.stats(),
        dead_letters,
        ledger.as_ref(),
        tally.snapshot(),
    )
    .await;
    sqlite.close().await;
    report
}

/// A SQLite file for one demo run, deleted (with its WAL files) when dropped.
struct TempDb {
    path: std::path::PathBuf,
}

impl TempDb {
    fn new(seed: u64) -> Self {
        let name = format!(
            "bidorch-demo-{}-{seed}-{}.db",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        Self {
            path: std::env::temp_dir().join(name),
        }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The demo's workers, stopped together.
#[derive(Default)]
struct Fleet {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    workers: Vec<tokio::task::JoinHandle<worker::WorkerReport>>,
}

impl Fleet {
    /// Starts one worker on `source`.
    fn spawn(
        &mut self,
        source: Box<dyn crate::source::PostingSource>,
        pipeline: Arc<Pipeline>,
        options: &WorkerOptions,
    ) {
        let stop = self
            .stop
            .get_or_insert_with(|| tokio::sync::watch::channel(false).0);
        let mut stopped = stop.subscribe();
        self.workers.push(tokio::spawn(worker::run(
            source,
            pipeline,
            options.clone(),
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )));
    }

    /// Asks every worker to stop and waits for them.
    async fn stop(self) {
        if let Some(stop) = self.stop {
            let _ = stop.send(true);
        }
        for w in self.workers {
            let _ = w.await;
        }
    }
}

/// Where a run stands while it drains.
enum Drain {
    Done,
    Pending { position: u64, state: String },
}

/// The longest a demo run may take before it is reported as stalled.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Polls `check` every `period`, moving the progress bar, until the run has drained.
async fn wait_until_drained<F, Fut>(
    bar: &indicatif::ProgressBar,
    period: Duration,
    mut check: F,
) -> Result<(), DemoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Drain, DemoError>>,
{
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        match check().await? {
            Drain::Done => {
                bar.finish_and_clear();
                return Ok(());
            }
            Drain::Pending { position, state } => {
                bar.set_position(position);
                if Instant::now() > deadline {
                    bar.abandon();
                    return Err(DemoError::Stalled(RUN_LIMIT, state));
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn report(
    backend: &'static str,
    options: &DemoOptions,
    input: &DemoInput,
    elapsed: Duration,
    stats: &SandboxStats,
    dead_letters: BTreeMap<String, u64>,
    ledger: &dyn BidLedger,
    counts: crate::tally::Counts,
) -> Result<DemoReport, DemoError> {
    let bids_for = |key: &String| stats.postings.get(key).map_or(0, |p| p.bids);
    let eligible: BTreeSet<&String> = input.eligible.iter().collect();
    Ok(DemoReport {
        backend,
        workers: options.workers,
        postings: options.postings,
        eligible: input.eligible.len(),
        messages: input.messages.len(),
        poison: input.poison,
        elapsed,
        bids: stats.bids_created,
        replays: stats.replays,
        conflicts: stats.conflicts,
        double_bids: stats.postings.values().filter(|p| p.bids > 1).count() as u64,
        missing_bids: eligible.iter().filter(|k| bids_for(k) == 0).count() as u64,
        wrong_bids: input.ineligible.iter().filter(|k| bids_for(k) > 0).count() as u64,
        dead_letters,
        ledger: ledger
            .counts_by_state()
            .await?
            .into_iter()
            .map(|(s, n)| (s.as_str(), n))
            .collect(),
        counts,
    })
}
