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

use crate::app::{StartError, System};
use crate::config::{
    BiddingSettings, LedgerKind, LockKind, MarketplaceKind, MarketplaceSettings, SecretUrl,
    Settings, SourceKind,
};
use crate::ledger::{LedgerError, LedgerReports};
use crate::marketplace::sandbox::{SandboxOptions, SandboxStats};
use crate::source::SourceError;
use crate::tally::Tally;
use crate::worker;

pub use self::generate::{BLOCKED, DemoInput, MARKETPLACES, MIN_BUDGET, generate};
pub(crate) use self::real::remove_run;
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
    #[error("starting the demo's system")]
    Start(#[from] StartError),
    #[error("ledger")]
    Ledger(#[from] LedgerError),
    #[error("broker")]
    Source(#[from] SourceError),
    #[error("publishing: {0}")]
    Publish(String),
    #[error("the run did not finish within {0:?}: {1}")]
    Stalled(Duration, String),
}

/// The demo's settings over `base`: its own marketplaces served by an in-process sandbox, its
/// policy, and short retry delays (the backends are the caller's).
fn demo_settings(base: &Settings) -> Settings {
    let mut s = base.clone();
    s.marketplace.kind = MarketplaceKind::Sandbox;
    s.marketplaces = generate::MARKETPLACES
        .iter()
        .map(|m| {
            // The sandbox serves them; its address is filled in when it starts.
            let settings = MarketplaceSettings {
                api: generate::api_of(m),
                ..MarketplaceSettings::new(
                    url::Url::parse(&format!("http://127.0.0.1/{m}"))
                        .expect("a loopback URL with a plain path parses"),
                    "BIDORCH_DEMO_TOKEN",
                )
            };
            ((*m).to_owned(), settings)
        })
        .collect();
    s.bidding = BiddingSettings {
        min_budget: generate::MIN_BUDGET.into(),
        blocked_keywords: generate::BLOCKED.iter().map(|s| (*s).to_owned()).collect(),
        daily_bid_cap: 0,
        cover_letter: "Hello! I would love to help with \"{{ title }}\".".to_owned(),
        ..BiddingSettings::default()
    };
    s
}

/// The sandbox options of a run: idempotency honoured and a second Freelancer bid refused, unless
/// `--naive-marketplace`.
fn sandbox_options(options: &DemoOptions) -> SandboxOptions {
    SandboxOptions {
        honour_idempotency: !options.naive_marketplace,
        refuse_second_bid: !options.naive_marketplace,
        ..SandboxOptions::default()
    }
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
    // A throw-away SQLite file in WAL mode: readers (most duplicates end at the first ledger
    // check) run in parallel with the writer, which an in-memory database cannot do.
    let db = TempDb::new(options.seed);
    let mut s = demo_settings(settings);
    s.source.kind = SourceKind::Memory;
    s.lock.kind = LockKind::Memory;
    s.database.kind = LedgerKind::Sqlite;
    s.database.url = SecretUrl::new(db.url());
    s.database.max_connections = 8;
    s.worker.retry_lock_held = Duration::from_millis(20);
    s.worker.retry_unavailable = Duration::from_millis(200);
    s.worker.retry_transient = Duration::from_millis(50);
    let tally = Arc::new(Tally::default());
    let system = System::builder(&s)
        .sandbox(sandbox_options(options))
        .tally(tally.clone())
        .build()
        .await?;
    let broker = system
        .memory_queue()
        .expect("source.kind = memory has a queue")
        .clone();

    let started = Instant::now();
    for body in &input.messages {
        broker.publish(body.clone());
    }
    let fleet = Fleet::start(&system, options.workers).await?;
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
    report(
        "embedded",
        options,
        &input,
        elapsed,
        &system
            .sandbox()
            .expect("marketplace.kind = sandbox")
            .stats(),
        dead_letters,
        system.ports().reports.as_ref(),
        tally.snapshot(),
    )
    .await
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

/// The demo's workers, each on a consumer of its own, stopped together.
struct Fleet {
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<worker::WorkerReport>>,
}

impl Fleet {
    /// Starts `n` workers on `system`.
    async fn start(system: &System, n: usize) -> Result<Self, DemoError> {
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut workers = Vec::new();
        for i in 0..n.max(1) {
            let source = system.open_source(&format!("demo-{i}")).await?;
            let mut stopped = stop.subscribe();
            workers.push(tokio::spawn(worker::run(
                source,
                system.pipeline(),
                system.worker_options(),
                worker::Status::default(),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )));
        }
        Ok(Self { stop, workers })
    }

    /// Asks every worker to stop and waits for them.
    async fn stop(self) {
        let _ = self.stop.send(true);
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
    ledger: &dyn LedgerReports,
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
        lookups: stats.lookups,
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
