//! Assembling a worker from settings: backends chosen by configuration, start-up checks that fail
//! closed, the operations endpoint, and the consume loop with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::Settings;
use crate::ledger::{self, BidLedger, LedgerError};
use crate::lock::{self, LockError, LockStore};
use crate::marketplace::{HttpMarketplace, Marketplace, MarketplaceError};
use crate::pipeline::{Pipeline, RetryDelays};
use crate::policy::Policy;
use crate::source::{AmqpPostingSource, ConsumerState, SourceError, SourceHealth};
use crate::worker::{self, WorkerOptions, WorkerReport};

/// Why a worker could not start. Each names the part at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("lock store: {0}")]
    Lock(#[from] LockError),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("marketplace: {0}")]
    Marketplace(#[from] MarketplaceError),
    #[error("broker: {0}")]
    Source(#[from] SourceError),
    #[error("operations endpoint on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The ports a pipeline runs on.
#[derive(Clone)]
pub struct Components {
    pub ledger: Arc<dyn BidLedger>,
    pub locks: Arc<dyn LockStore>,
    pub marketplace: Arc<dyn Marketplace>,
}

impl Components {
    /// Connects the configured production backends (the ledger migrated).
    pub async fn connect(settings: &Settings) -> Result<Self, StartError> {
        // Fails closed on in-process locks with a RabbitMQ source (see `lock::from_settings`).
        let locks = lock::from_settings(settings)?;
        let ledger = ledger::from_settings(&settings.database).await?;
        let marketplace: Arc<dyn Marketplace> =
            Arc::new(HttpMarketplace::new(&settings.marketplaces, |var| {
                std::env::var(var).ok()
            })?);
        Ok(Self {
            ledger,
            locks,
            marketplace,
        })
    }

    /// The pipeline over these ports.
    pub fn pipeline(&self, settings: &Settings) -> Pipeline {
        Pipeline::new(
            self.ledger.clone(),
            self.locks.clone(),
            self.marketplace.clone(),
            Policy::new(&settings.bidding),
            settings.lock.ttl,
        )
    }
}

/// Consume-loop options from settings.
pub fn worker_options(settings: &Settings) -> WorkerOptions {
    WorkerOptions {
        delays: RetryDelays {
            lock_held: settings.worker.retry_lock_held,
            unavailable: settings.worker.retry_unavailable,
            transient: settings.worker.retry_transient,
        },
        max_attempts: settings.amqp.max_attempts,
        grace: settings.worker.shutdown_grace,
        tally: None,
        destination: settings.amqp.exchange.clone(),
    }
}

/// Runs a production worker until `shutdown` resolves: connects everything, serves `/healthz`,
/// `/readyz` and `/metrics` on `http.addr` (skipped when `serve_http` is false, e.g. several
/// workers in one test process), and consumes.
pub async fn run_worker(
    settings: &Settings,
    serve_http: bool,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<WorkerReport, StartError> {
    // Before any port is built: metric handles bind to the recorder present at first use.
    crate::metrics::install();
    let components = Components::connect(settings).await?;
    run_worker_with(settings, components, serve_http, None, shutdown).await
}

/// [`run_worker`] over ports the caller built (tests pass their own marketplace client), with an
/// optional [`Tally`](crate::tally::Tally) of exact counts.
pub async fn run_worker_with(
    settings: &Settings,
    components: Components,
    serve_http: bool,
    tally: Option<Arc<crate::tally::Tally>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<WorkerReport, StartError> {
    let instance = settings.instance_id();
    let pipeline = Arc::new(components.pipeline(settings));
    let source = AmqpPostingSource::connect(&settings.amqp, &instance).await?;
    let consuming = Arc::new(AtomicBool::new(false));

    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = if serve_http {
        let addr = settings.http.addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Http { addr, source })?;
        let readiness = crate::http::Readiness {
            locks: components.locks.clone(),
            ledger: components.ledger.clone(),
            consuming: consuming.clone(),
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

    // `/readyz` follows the consumer itself: it turns unready while reconnecting, not only when
    // the loop ends ("process up, consumer dead" must be visible).
    let mirror = tokio::spawn(mirror_health(source.health(), consuming.clone()));
    tracing::info!(
        instance = %instance,
        queue = %settings.amqp.queue,
        prefetch = settings.amqp.prefetch,
        "Worker consuming"
    );
    let report = worker::run(
        Box::new(source),
        pipeline,
        WorkerOptions {
            tally,
            ..worker_options(settings)
        },
        consuming,
        shutdown,
    )
    .await;
    mirror.abort();
    let _ = http_stop.send(());
    if let Some(task) = http_task {
        let _ = task.await;
    }
    if report.source_ended {
        // Not a shutdown we were asked for: the consumer is gone for good. Exit non-zero so an
        // orchestrator restarts the process; unsettled work is redelivered by the broker.
        return Err(StartError::Source(SourceError::Unavailable(
            format!(
                "stopped consuming from `{}` and could not recover within amqp.reconnect_timeout ({})",
                settings.amqp.queue,
                humantime::format_duration(settings.amqp.reconnect_timeout)
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
