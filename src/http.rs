//! The operations endpoint on `http.addr`: `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` says the process is alive. `/readyz` is 200 only when the lock store and the
//! ledger answer, the worker is actually consuming, and nothing is paused (a dependency, or a
//! marketplace refusing our credentials, rate limiting us, down); otherwise 503 with each
//! check's state and why each pause started, so an operator sees at once what is wrong.
//! `/metrics` also exports the verdict as `bidorch_ready` (1/0).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::flow::{Breakers, Gate};
use crate::ledger::BidLedger;
use crate::lock::LockStore;

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    pub locks: Arc<dyn LockStore>,
    pub ledger: Arc<dyn BidLedger>,
    /// Raised by the worker while deliveries can flow.
    pub consuming: Arc<AtomicBool>,
    /// The worker's gate (paused dependencies).
    pub gate: Gate,
    /// The pipeline's marketplace breakers (paused marketplaces).
    pub breakers: Breakers,
}

/// Each check's state, as `/readyz` reports it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReadyReport {
    pub ready: bool,
    pub lock_store: String,
    pub ledger: String,
    pub consumer: String,
    /// What is paused (`ledger`, `marketplace:upwork`, …) → why, and for how long.
    pub paused: std::collections::BTreeMap<String, String>,
}

/// A dependency check must not hang the probe.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn check<E: std::fmt::Display>(f: impl Future<Output = Result<(), E>>) -> String {
    match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    }
}

impl Readiness {
    /// Runs every check.
    pub async fn report(&self) -> ReadyReport {
        let (lock_store, ledger) =
            tokio::join!(check(self.locks.health()), check(self.ledger.health()));
        let consumer = if self.consuming.load(Ordering::SeqCst) {
            "ok".to_owned()
        } else {
            "not consuming".to_owned()
        };
        let paused: std::collections::BTreeMap<String, String> = self
            .gate
            .paused()
            .into_iter()
            .chain(self.breakers.paused())
            .map(|p| {
                let secs = p.since.elapsed().as_secs();
                (p.dependency, format!("{} for {secs}s", p.reason.label()))
            })
            .collect();
        let ready = lock_store == "ok" && ledger == "ok" && consumer == "ok" && paused.is_empty();
        metrics::gauge!(crate::metrics::READY).set(f64::from(u8::from(ready)));
        ReadyReport {
            ready,
            lock_store,
            ledger,
            consumer,
            paused,
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let report = readiness.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

async fn metrics_text(State(readiness): State<Readiness>) -> Response {
    // The readiness verdict as a gauge too: alerts read metrics, not `/readyz`.
    readiness.report().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// The router for the operations endpoint.
pub fn router(readiness: Readiness) -> Router {
    crate::metrics::install();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(readiness)
}

/// Serves the operations endpoint until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(readiness))
        .with_graceful_shutdown(shutdown)
        .await
}
