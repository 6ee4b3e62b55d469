//! The composition root: [`Settings`] in, a running system out.
//!
//! Every backend is chosen here, by configuration, at run time — `source.kind` (`amqp` |
//! `memory`), `lock.kind` (`redis` | `memory`), `database.kind` (`postgres` | `sqlite`),
//! `marketplace.kind` (`http` | `sandbox`) — so the same binary serves a laptop and a cluster.
//! `bidorch worker`, the demo (both backends) and the tests all build their system here, and
//! the safety refusals live here once: in-process locks with a shared queue would let every
//! worker bid, so that combination never starts.
//!
//! A caller may hand in its own port ([`SystemBuilder::marketplace`], [`SystemBuilder::ledger`],
//! [`SystemBuilder::locks`]) — tests wrap the real ports to inject faults — and everything else
//! is built from the settings.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{LockKind, MarketplaceKind, Settings, SourceKind};
use crate::ledger::{self, BidLedger, LedgerError};
use crate::lock::{self, LockError, LockStore};
use crate::marketplace::sandbox::{Sandbox, SandboxOptions, SandboxServer};
use crate::marketplace::{HttpMarketplace, Marketplace, MarketplaceError};
use crate::pipeline::{Pipeline, RetryRules};
use crate::policy::Policy;
use crate::source::{
    AmqpPostingSource, ConsumerState, MemoryQueue, PostingSource, SourceError, SourceHealth,
};
use crate::tally::Tally;
use crate::worker::{self, WorkerOptions, WorkerReport};

/// Why a system could not be built or run. Each names the part at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("refusing to start: {0}")]
    Unsafe(String),
    #[error("lock store")]
    Lock(#[from] LockError),
    #[error("ledger")]
    Ledger(#[from] LedgerError),
    #[error("marketplace client")]
    Marketplace(#[from] MarketplaceError),
    #[error("posting source")]
    Source(#[from] SourceError),
    #[error("sandbox marketplace")]
    Sandbox(#[source] std::io::Error),
    #[error("operations endpoint on {addr}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The ports a pipeline runs on. Cloning is shallow.
#[derive(Clone)]
pub struct Ports {
    pub ledger: Arc<dyn BidLedger>,
    pub locks: Arc<dyn LockStore>,
    pub marketplace: Arc<dyn Marketplace>,
}

/// Builds a [`System`]; see the module docs.
pub struct SystemBuilder {
    settings: Settings,
    ledger: Option<Arc<dyn BidLedger>>,
    locks: Option<Arc<dyn LockStore>>,
    marketplace: Option<Arc<dyn Marketplace>>,
    sandbox: SandboxOptions,
    queue: Option<MemoryQueue>,
    tally: Option<Arc<Tally>>,
}

impl SystemBuilder {
    /// Uses this ledger instead of the one `database` configures.
    pub fn ledger(mut self, ledger: Arc<dyn BidLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Uses this lock store instead of the one `lock` configures.
    pub fn locks(mut self, locks: Arc<dyn LockStore>) -> Self {
        self.locks = Some(locks);
        self
    }

    /// Uses this marketplace client instead of the one `marketplace` configures.
    pub fn marketplace(mut self, marketplace: Arc<dyn Marketplace>) -> Self {
        self.marketplace = Some(marketplace);
        self
    }

    /// How the in-process sandbox behaves when `marketplace.kind = "sandbox"` (its token is the
    /// system's own).
    pub fn sandbox(mut self, options: SandboxOptions) -> Self {
        self.sandbox = options;
        self
    }

    /// With `source.kind = "memory"`: consume this queue (e.g. one a test publishes into)
    /// instead of a new one.
    pub fn memory_queue(mut self, queue: MemoryQueue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Counts every outcome exactly (the demo and tests read it back).
    pub fn tally(mut self, tally: Arc<Tally>) -> Self {
        self.tally = Some(tally);
        self
    }

    /// Connects what the settings name (the ledger migrated) and assembles the pipeline.
    pub async fn build(self) -> Result<System, StartError> {
        let settings = self.settings;
        refuse_unsafe(&settings)?;
        if settings.marketplaces.is_empty() && self.marketplace.is_none() {
            return Err(StartError::Config(crate::config::ConfigError::Invalid {
                key: "marketplaces".to_owned(),
                problem: "configure at least one marketplace to bid on \
                          (marketplaces.<name>.base_url and marketplaces.<name>.token_env)"
                    .to_owned(),
            }));
        }
        let instance = settings.instance_id();
        let locks: Arc<dyn LockStore> = match self.locks {
            Some(locks) => locks,
            None => lock::from_settings(settings.lock.kind, &settings.redis, &instance)?,
        };
        let ledger = match self.ledger {
            Some(ledger) => ledger,
            None => ledger::from_settings(&settings.database).await?,
        };
        let (marketplace, sandbox) = match (self.marketplace, settings.marketplace.kind) {
            (Some(client), _) => (client, None),
            (None, MarketplaceKind::Http) => {
                let client =
                    HttpMarketplace::new(&settings.marketplaces, settings.lock.ttl, |var| {
                        std::env::var(var).ok()
                    })?;
                (Arc::new(client) as Arc<dyn Marketplace>, None)
            }
            (None, MarketplaceKind::Sandbox) => {
                let (client, server) = in_process_sandbox(&settings, self.sandbox).await?;
                (client, Some(server))
            }
        };
        let ports = Ports {
            ledger,
            locks,
            marketplace,
        };
        let pipeline = Pipeline::new(
            ports.ledger.clone(),
            ports.locks.clone(),
            ports.marketplace.clone(),
            Policy::new(&settings.bidding).map_err(crate::config::ConfigError::from)?,
            settings.lock.ttl,
        )
        .with_instance(instance.clone())
        .with_rates(
            settings
                .marketplaces
                .iter()
                .filter_map(|(name, m)| Some((name.clone(), m.rate()?)))
                .collect(),
        );
        let pipeline = match scoring(&settings)? {
            Some(scoring) => pipeline.with_scoring(scoring),
            None => pipeline,
        };
        let pipeline = Arc::new(pipeline);
        let queue = match settings.source.kind {
            SourceKind::Memory => Some(
                self.queue
                    .unwrap_or_else(|| MemoryQueue::new(settings.amqp.delivery_limit)),
            ),
            SourceKind::Amqp => None,
        };
        Ok(System {
            settings,
            ports,
            pipeline,
            queue,
            sandbox,
            tally: self.tally,
        })
    }
}

/// The scoring service `[scoring]` names, if any.
fn scoring(settings: &Settings) -> Result<Option<crate::pipeline::Scoring>, StartError> {
    if !settings.scoring.enabled() {
        return Ok(None);
    }
    let scorer = crate::scoring::HttpScorer::new(&settings.scoring, |var| std::env::var(var).ok())
        .map_err(|e| {
            StartError::Config(crate::config::ConfigError::Invalid {
                key: "scoring".to_owned(),
                problem: e.to_string(),
            })
        })?;
    Ok(Some(crate::pipeline::Scoring {
        scorer: Arc::new(scorer),
        threshold: settings.scoring.threshold,
        on_failure: settings.scoring.on_failure,
    }))
}

/// The safety refusals, in one place.
fn refuse_unsafe(settings: &Settings) -> Result<(), StartError> {
    if settings.lock.kind == LockKind::Memory && settings.source.kind == SourceKind::Amqp {
        return Err(StartError::Unsafe(
            "lock.kind = \"memory\" cannot be used with source.kind = \"amqp\": an in-process \
             lock only excludes tasks of this process, while other workers consume the same \
             queue, so each of them could bid on the same posting. Use lock.kind = \"redis\" \
             (USE_REDIS_LOCKS=true with REDIS_URL or REDIS_HOST) for workers on RabbitMQ; the \
             memory store is for the embedded mode (source.kind = \"memory\")."
                .to_owned(),
        ));
    }
    Ok(())
}

/// Serves a sandbox on a loopback port and points every configured marketplace at it, with a
/// token only this process knows.
async fn in_process_sandbox(
    settings: &Settings,
    mut options: SandboxOptions,
) -> Result<(Arc<dyn Marketplace>, SandboxServer), StartError> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    options.token = Some(token.clone());
    let server = SandboxServer::start(options)
        .await
        .map_err(StartError::Sandbox)?;
    let mut marketplaces = settings.marketplaces.clone();
    for (name, m) in &mut marketplaces {
        m.base_url = url::Url::parse(&format!("{}/{name}", server.url()))
            .expect("a loopback URL with a plain path parses");
    }
    let client = HttpMarketplace::new(&marketplaces, settings.lock.ttl, |_| Some(token.clone()))?;
    Ok((Arc::new(client), server))
}

/// A system ready to run workers: its ports, its pipeline, and where deliveries come from.
pub struct System {
    settings: Settings,
    ports: Ports,
    pipeline: Arc<Pipeline>,
    /// The in-process queue when `source.kind = "memory"`.
    queue: Option<MemoryQueue>,
    /// The in-process sandbox when `marketplace.kind = "sandbox"`; stops when the system drops.
    sandbox: Option<SandboxServer>,
    tally: Option<Arc<Tally>>,
}

impl System {
    /// A builder over these settings.
    pub fn builder(settings: &Settings) -> SystemBuilder {
        SystemBuilder {
            settings: settings.clone(),
            ledger: None,
            locks: None,
            marketplace: None,
            sandbox: SandboxOptions::default(),
            queue: None,
            tally: None,
        }
    }

    /// [`builder`](Self::builder)`(settings).build()`.
    pub async fn build(settings: &Settings) -> Result<Self, StartError> {
        Self::builder(settings).build().await
    }

    /// The settings the system was built from.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The ports.
    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// The pipeline (shared by every worker of this system).
    pub fn pipeline(&self) -> Arc<Pipeline> {
        self.pipeline.clone()
    }

    /// The in-process queue, when `source.kind = "memory"` (publish into it, read dead letters).
    pub fn memory_queue(&self) -> Option<&MemoryQueue> {
        self.queue.as_ref()
    }

    /// The in-process sandbox, when `marketplace.kind = "sandbox"`.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref().map(SandboxServer::sandbox)
    }

    /// Consume-loop options from the settings.
    pub fn worker_options(&self) -> WorkerOptions {
        WorkerOptions {
            tally: self.tally.clone(),
            ..worker_options(&self.settings)
        }
    }

    /// Opens a new consumer; `tag` names it to the broker (`bidorch-{tag}`).
    pub async fn open_source(&self, tag: &str) -> Result<Box<dyn PostingSource>, StartError> {
        Ok(match &self.queue {
            Some(queue) => Box::new(queue.subscribe(usize::from(self.settings.amqp.prefetch))),
            None => Box::new(AmqpPostingSource::connect(&self.settings.amqp, tag).await?),
        })
    }

    /// Runs one worker until `shutdown` resolves: opens its consumer, serves `/healthz`,
    /// `/readyz` and `/metrics` on `http.addr` when `serve_http` (off for several workers in one
    /// test process), and consumes. A consumer that cannot be resumed is an error, so the
    /// process exits non-zero and an orchestrator restarts it.
    pub async fn run_worker(
        &self,
        serve_http: bool,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<WorkerReport, StartError> {
        let instance = self.settings.instance_id();
        let source = self.open_source(&instance).await?;
        let status = worker::Status::default();
        let consuming = status.consuming.clone();
        let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http_task = if serve_http {
            let addr = self.settings.http.addr;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Http { addr, source })?;
            let readiness = crate::http::Readiness {
                locks: self.ports.locks.clone(),
                ledger: self.ports.ledger.clone(),
                consuming: consuming.clone(),
                gate: status.gate.clone(),
                breakers: self.pipeline.breakers().clone(),
            };
            tracing::info!(%addr, "Serving /healthz, /readyz and /metrics");
            Some(tokio::spawn(crate::http::serve(
                listener,
                readiness,
                async {
                    let _ = http_stopped.await;
                },
            )))
        } else {
            None
        };
        // `/readyz` follows the consumer itself: it turns unready while reconnecting, not only
        // when the loop ends ("process up, consumer dead" must be visible).
        let mirror = tokio::spawn(mirror_health(source.health(), consuming.clone()));
        let unresolved = tokio::spawn(watch_unresolved(
            self.ports.ledger.clone(),
            self.settings.reconcile.older_than,
        ));
        tracing::info!(
            instance = %instance,
            queue = %self.settings.amqp.queue,
            prefetch = self.settings.amqp.prefetch,
            "Worker consuming"
        );
        let report = worker::run(
            source,
            self.pipeline.clone(),
            self.worker_options(),
            status,
            shutdown,
        )
        .await;
        mirror.abort();
        unresolved.abort();
        let _ = http_stop.send(());
        if let Some(task) = http_task {
            let _ = task.await;
        }
        if report.source_ended {
            return Err(StartError::Source(SourceError::Unavailable(
                format!(
                    "stopped consuming from `{}` and could not recover within \
                     amqp.reconnect_timeout ({})",
                    self.settings.amqp.queue,
                    humantime::format_duration(self.settings.amqp.reconnect_timeout)
                )
                .into(),
            )));
        }
        tracing::info!(
            received = report.received,
            settled = report.settled,
            abandoned = report.abandoned,
            "Worker stopped"
        );
        Ok(report)
    }
}

/// `bidorch worker`: builds the system from `settings` and runs one worker until `shutdown`.
pub async fn run_worker(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<WorkerReport, StartError> {
    // Before any port is built: metric handles bind to the recorder present at first use.
    crate::metrics::install();
    System::build(settings)
        .await?
        .run_worker(true, shutdown)
        .await
}

/// Consume-loop options from settings.
pub fn worker_options(settings: &Settings) -> WorkerOptions {
    WorkerOptions {
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

/// Mirrors a source's health into the readiness flag until aborted.
async fn mirror_health(mut health: SourceHealth, consuming: Arc<AtomicBool>) {
    loop {
        let now = health.is_consuming();
        consuming.store(now, Ordering::SeqCst);
        let status = health
            .wait_for(|s| (s.state == ConsumerState::Consuming) != now)
            .await;
        if status.state == ConsumerState::Failed || status.state == ConsumerState::Stopped {
            consuming.store(false, Ordering::SeqCst);
            return;
        }
    }
}

/// How often the worker counts unresolved sends.
const UNRESOLVED_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps `bidorch_ledger_unresolved_sends` current — postings whose request was sent more than
/// `older_than` ago and never recorded — with one indexed count every 30 s, and says so at ERROR
/// (an operator must run `bidorch reconcile`) when the count stays above 0, once per change.
async fn watch_unresolved(ledger: Arc<dyn BidLedger>, older_than: std::time::Duration) {
    let mut reported = 0;
    loop {
        let before = chrono::Utc::now()
            - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        match ledger.count_unresolved(before).await {
            Ok(n) => {
                metrics::gauge!(crate::metrics::UNRESOLVED_SENDS).set(n as f64);
                if n > 0 && n != reported {
                    tracing::error!(
                        unresolved = n,
                        older_than = %humantime::format_duration(older_than),
                        "Bids sent but never recorded: run `bidorch reconcile` to settle them"
                    );
                } else if n == 0 && reported > 0 {
                    tracing::info!("No unresolved sends left");
                }
                reported = n;
            }
            Err(e) => {
                tracing::debug!(error = %crate::error::Chain(&e), "Counting unresolved sends failed")
            }
        }
        tokio::time::sleep(UNRESOLVED_EVERY).await;
    }
}
