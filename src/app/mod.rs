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

use std::sync::Arc;

use crate::config::{LedgerKind, LockKind, MarketplaceKind, Settings, SourceKind};
use crate::control::{Identity, PauseBoard};
use crate::ledger::{BidLedger, ControlStore, LedgerError, LedgerReports};
use crate::lock::{LockError, LockStore, Rate, RateLimiter};
use crate::marketplace::sandbox::{Sandbox, SandboxOptions, SandboxServer};
use crate::marketplace::{HttpMarketplace, Marketplace, MarketplaceError};
use crate::pipeline::Pipeline;
use crate::policy::Policy;
use crate::source::{AmqpPostingSource, MemoryQueue, PostingSource, SourceError};
use crate::tally::Tally;
use crate::worker::WorkerOptions;

mod live;
mod ports;
mod run;

pub use self::live::{LiveResult, live_checks};
pub use self::ports::{LedgerPorts, LockPorts, ledger, locks};
pub use self::run::worker;

/// Why a system could not be built or run. Each names the part at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `[bidding]` does not make a policy (the error names the key).
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
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

/// Loads the settings — every layer, validated — and checks that `[bidding]` makes a policy:
/// what every command starts from, so a bad configuration stops it naming the key.
pub fn load_settings(file: Option<&std::path::Path>) -> Result<Settings, StartError> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    load_settings_from(file, &env)
}

/// [`load_settings`] with an explicit environment (tests pass their own).
pub fn load_settings_from(
    file: Option<&std::path::Path>,
    env: &std::collections::HashMap<String, String>,
) -> Result<Settings, StartError> {
    let settings = Settings::load_from(file, env)?;
    Policy::new(&settings.bidding)?;
    Ok(settings)
}

/// The ports a system runs on. Cloning is shallow.
#[derive(Clone)]
pub struct Ports {
    /// A posting's attempt: lookup, claim, finish.
    pub ledger: Arc<dyn BidLedger>,
    /// Reconcile, inspect and the gauges.
    pub reports: Arc<dyn LedgerReports>,
    pub locks: Arc<dyn LockStore>,
    /// The marketplaces' fleet-wide request rates.
    pub rates: Arc<dyn RateLimiter>,
    pub marketplace: Arc<dyn Marketplace>,
    /// Operators' pauses, their audit history, the workers' reports.
    pub controls: Arc<dyn ControlStore>,
}

/// Builds a [`System`]; see the module docs.
pub struct SystemBuilder {
    settings: Settings,
    ledger: Option<LedgerPorts>,
    locks: Option<Arc<dyn LockStore>>,
    marketplace: Option<Arc<dyn Marketplace>>,
    sandbox: SandboxOptions,
    queue: Option<MemoryQueue>,
    tally: Option<Arc<Tally>>,
}

impl SystemBuilder {
    /// Uses this ledger instead of the one `database` configures.
    pub fn ledger(mut self, ledger: LedgerPorts) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Uses this lock store for leases instead of the one `lock` configures (the rates stay in
    /// the configured one).
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
        let configured = ports::locks(settings.lock.kind, &settings.redis, &instance)?;
        let locks: Arc<dyn LockStore> = match self.locks {
            Some(locks) => locks,
            None => configured.locks,
        };
        let ledger = match self.ledger {
            Some(ledger) => ledger,
            None => ports::ledger(&settings.database).await?,
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
            ledger: ledger.ledger,
            reports: ledger.reports,
            locks,
            rates: configured.rates,
            marketplace,
            controls: ledger.controls,
        };
        // Read once before anything is worked on: a system started during a pause starts paused.
        let board = PauseBoard::new();
        match ports.controls.pause_state().await {
            Ok(state) => board.publish(state),
            Err(e) => tracing::warn!(
                error = %crate::error::Chain(&e),
                "Cannot read the pause state yet; postings wait until it is read"
            ),
        }
        let pipeline = Pipeline::new(
            ports.ledger.clone(),
            ports.locks.clone(),
            ports.marketplace.clone(),
            Policy::new(&settings.bidding)?.with_retention(settings.ledger.retention),
            settings.lock.ttl,
        )
        .with_instance(instance.clone())
        .with_pause_board(board.clone())
        .with_lock_held_recheck(settings.worker.retry_lock_held)
        .with_rates(
            ports.rates.clone(),
            settings
                .marketplaces
                .iter()
                .filter_map(|(name, m)| Some((name.clone(), Rate::of(m)?)))
                .collect(),
        );
        let pipeline = match scoring(&settings)? {
            Some(scoring) => pipeline.with_scoring(scoring),
            None => pipeline,
        };
        let pipeline = Arc::new(pipeline);
        let controls = tokio::spawn(crate::control::poll(
            ports.controls.clone(),
            board,
            pipeline.breakers().clone(),
            Identity::new(instance),
        ));
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
            controls: controls.abort_handle(),
        })
    }
}

/// The scoring service `[scoring]` names, if any.
fn scoring(settings: &Settings) -> Result<Option<crate::pipeline::Scoring>, StartError> {
    if !settings.scoring.enabled() {
        return Ok(None);
    }
    let scorer = crate::scorer::HttpScorer::new(&settings.scoring, |var| std::env::var(var).ok())
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

/// What `bidorch worker` — production — refuses besides: the parts of the embedded mode that
/// would break the promise silently in a fleet. The demo and tests build systems from them.
pub(crate) fn refuse_embedded_parts(settings: &Settings) -> Result<(), StartError> {
    if settings.marketplace.kind == MarketplaceKind::Sandbox {
        return Err(StartError::Unsafe(
            "marketplace.kind = \"sandbox\" cannot be used by `bidorch worker`: bids would go \
             to a sandbox inside this process, and postings would be recorded `placed` without \
             being bid anywhere. Use marketplace.kind = \"http\" with each marketplace's \
             base_url (point them at `bidorch marketplace` to try a configuration out); \
             `bidorch demo` runs the in-process sandbox."
                .to_owned(),
        ));
    }
    if settings.database.kind == LedgerKind::Sqlite {
        return Err(StartError::Unsafe(
            "database.kind = \"sqlite\" cannot be used by `bidorch worker`: a SQLite ledger is \
             one host's file (or, with sqlite::memory:, dies with the process), so other workers \
             cannot share it and a restart could forget a bid. Use database.kind = \"postgres\" \
             (DATABASE_URL); SQLite is for the embedded mode (`bidorch demo`)."
                .to_owned(),
        ));
    }
    refuse_unsafe(settings)
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
            .expect("a loopback URL with a plain path parses")
            .into();
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
    /// The task keeping the pause board current and reporting this process; ends with it.
    controls: tokio::task::AbortHandle,
}

impl Drop for System {
    fn drop(&mut self) {
        self.controls.abort();
    }
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
            ..WorkerOptions::from_settings(&self.settings)
        }
    }

    /// Opens a new consumer; `tag` names it to the broker (`bidorch-{tag}`).
    pub async fn open_source(&self, tag: &str) -> Result<Box<dyn PostingSource>, StartError> {
        Ok(match &self.queue {
            Some(queue) => Box::new(queue.subscribe(usize::from(self.settings.amqp.prefetch))),
            None => Box::new(AmqpPostingSource::connect(&self.settings.amqp, tag).await?),
        })
    }
}
