//! The operations endpoint on `http.addr`: `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` says the process is alive. `/readyz` is 200 only when the lock store and the
//! ledger answer and the worker is actually consuming; otherwise 503 with each check's state,
//! so an orchestrator stops routing to (or restarts) a worker that is up but useless.

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

use crate::ledger::BidLedger;
use crate::lock::LockStore;

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    pub locks: Arc<dyn LockStore>,
    pub ledger: Arc<dyn BidLedger>,
    /// Raised by the worker while deliveries can flow.
    pub consuming: Arc<AtomicBool>,
}

/// Each check's state, as `/readyz` reports it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReadyReport {
    pub ready: bool,
    pub lock_store: String,
    pub ledger: String,
    pub consumer: String,
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
        ReadyReport {
            ready: lock_store == "ok" && ledger == "ok" && consumer == "ok",
            lock_store,
            ledger,
            consumer,
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

async fn metrics_text() -> Response {
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
