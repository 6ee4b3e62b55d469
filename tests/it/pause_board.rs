//! The pause board as a worker keeps it: the pause state is read on, and so stays fresh, while
//! the worker's report of itself is stuck behind other writes (SQLite has one writer; a loaded
//! PostgreSQL is slow too). Before, the read waited for the report, the state went stale after
//! two seconds, and a stale state holds every marketplace back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bidorch::control::{Identity, PauseBoard, STALE_AFTER, poll};
use bidorch::flow::{BreakerSettings, Breakers};
use bidorch::ledger::{
    AuditEntry, ControlStore, LedgerError, PauseState, Scope, SqliteBidLedger, WorkerBeat,
    WorkerSeen,
};
use chrono::{DateTime, Utc};

use crate::support::eventually;

/// The embedded ledger, whose reports of a worker never get their turn to write.
struct StuckReports {
    inner: SqliteBidLedger,
    reports: AtomicUsize,
}

#[async_trait]
impl ControlStore for StuckReports {
    async fn pause_state(&self) -> Result<PauseState, LedgerError> {
        self.inner.pause_state().await
    }
    async fn pause(
        &self,
        scopes: &[Scope],
        reason: &str,
        by: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<i64, LedgerError> {
        self.inner.pause(scopes, reason, by, until).await
    }
    async fn resume(&self, scopes: &[Scope], by: &str) -> Result<(i64, Vec<Scope>), LedgerError> {
        self.inner.resume(scopes, by).await
    }
    async fn report(&self, _beat: &WorkerBeat) -> Result<(), LedgerError> {
        self.reports.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerSeen>, LedgerError> {
        self.inner.workers(since).await
    }
    async fn audit(&self, entry: &AuditEntry) -> Result<(), LedgerError> {
        self.inner.audit(entry).await
    }
    async fn history(&self, limit: u32) -> Result<Vec<AuditEntry>, LedgerError> {
        self.inner.history(limit).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_stuck_behind_other_writes_does_not_hold_every_marketplace_back() {
    let store = Arc::new(StuckReports {
        inner: SqliteBidLedger::connect_and_migrate("sqlite::memory:")
            .await
            .unwrap(),
        reports: AtomicUsize::new(0),
    });
    let board = PauseBoard::new();
    let polling = tokio::spawn(poll(
        store.clone(),
        board.clone(),
        Breakers::new(BreakerSettings::default()),
        Identity::new("stuck-reporter"),
    ));
    eventually(Duration::from_secs(10), "the first read", || async {
        board.check("upwork").is_none()
    })
    .await;
    eventually(Duration::from_secs(10), "a report under way", || async {
        store.reports.load(Ordering::SeqCst) > 0
    })
    .await;
    // The report stays stuck for longer than a read stays fresh: the passing time is the fault.
    tokio::time::sleep(STALE_AFTER * 2).await;
    let held = board.check("upwork");
    polling.abort();
    assert!(held.is_none(), "held back by a pause nobody made: {held:?}");
}
