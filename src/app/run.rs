//! Running a worker: its consumer, its operations endpoint, the health and unresolved-sends
//! watchers, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{StartError, System};
use crate::config::Settings;
use crate::ledger::LedgerReports;
use crate::source::{ConsumerState, SourceError, SourceHealth};
use crate::worker::{self, WorkerReport};

impl System {
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
            self.ports.reports.clone(),
            self.settings.reconcile.older_than,
        ));
        let budgets = tokio::spawn(watch_budgets(
            self.ports.reports.clone(),
            self.settings.clone(),
        ));
        let pruner = tokio::spawn(crate::retention::keep_pruning(
            self.ports.reports.clone(),
            self.settings.ledger.clone(),
        ));
        let settler = self.settings.reconcile.auto.then(|| {
            tokio::spawn(crate::reconcile::keep_settling(
                self.pipeline.clone(),
                self.ports.locks.clone(),
                self.ports.reports.clone(),
                self.settings.reconcile.clone(),
            ))
        });
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
        budgets.abort();
        pruner.abort();
        if let Some(settler) = settler {
            settler.abort();
        }
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
pub async fn worker(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<WorkerReport, StartError> {
    // Before anything connects: a refusal is about the configuration, whatever is reachable.
    super::refuse_embedded_parts(settings)?;
    // Before any port is built: metric handles bind to the recorder present at first use.
    crate::metrics::install();
    System::build(settings)
        .await?
        .run_worker(true, shutdown)
        .await
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

/// How often the worker reads its marketplaces' budgets.
const BUDGETS_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Keeps `bidorch_budget_credits` and `bidorch_budget_remaining` current for every marketplace
/// with a credit budget: one indexed read each, every 15 s.
async fn watch_budgets(ledger: Arc<dyn LedgerReports>, settings: Settings) {
    let Ok(policy) = crate::policy::Policy::new(&settings.bidding) else {
        return;
    };
    loop {
        let today = chrono::Utc::now().date_naive();
        for name in settings.marketplaces.keys() {
            let Some(budget) = policy.budget(name) else {
                continue;
            };
            let start = budget.period.start_of(today);
            if let Ok(spent) = ledger.budget_spent(name, start).await {
                let f = |d: rust_decimal::Decimal| d.to_string().parse::<f64>().unwrap_or(0.0);
                metrics::gauge!(crate::metrics::BUDGET_CREDITS, "marketplace" => name.clone())
                    .set(f(budget.credits));
                metrics::gauge!(crate::metrics::BUDGET_REMAINING, "marketplace" => name.clone())
                    .set(f((budget.credits - spent).max(rust_decimal::Decimal::ZERO)));
            }
        }
        tokio::time::sleep(BUDGETS_EVERY).await;
    }
}

/// How often the worker counts unresolved sends.
const UNRESOLVED_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps `bidorch_ledger_unresolved_sends` current — postings whose request was sent more than
/// `older_than` ago and never recorded — with one indexed count every 30 s, and says so at ERROR
/// when the count stays above 0, once per change (the automatic reconcile settles them unless
/// `reconcile.auto` is off or their marketplace is paused; `bidorch reconcile` does it by hand).
async fn watch_unresolved(ledger: Arc<dyn LedgerReports>, older_than: std::time::Duration) {
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
                        "Bids sent but never recorded: the automatic reconcile settles them (reconcile.auto), \
                         or run `bidorch reconcile`"
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
