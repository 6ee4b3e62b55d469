//! `bidorch reconcile`: settles postings whose bid request was sent but whose outcome was never
//! recorded (a worker lost between the call and the record, a message parked after the send).
//!
//! Each is run through the worker's own lease, claim and fence, re-sending only the stored
//! request under its idempotency key — the contract answers a replay with the same `bid_id` —
//! and recording the answer under the epoch. So it is safe while workers run and from several
//! places at once: at most one holds a posting's lease, and a superseded attempt writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::config::ReconcileSettings;
use crate::ledger::{LedgerEntry, LedgerError, LedgerReports};
use crate::lock::LockStore;
use crate::pipeline::{AttemptContext, Outcome, Pipeline};
use crate::posting::PostingKey;

/// What a reconcile run found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Unresolved postings found (sent longer ago than the threshold, not recorded).
    pub found: usize,
    /// Outcome label → postings (empty on a dry run).
    pub outcomes: BTreeMap<&'static str, usize>,
}

impl ReconcileReport {
    /// Postings still unsettled after the run (waiting on something: lease, marketplace).
    pub fn unsettled(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(label, _)| {
                !matches!(**label, "placed" | "rejected" | "duplicate" | "skipped")
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// The unresolved postings older than `older_than`, oldest first (at most `limit`).
pub async fn unresolved(
    ledger: &dyn LedgerReports,
    older_than: Duration,
    limit: u32,
) -> Result<Vec<LedgerEntry>, LedgerError> {
    let before = chrono::Utc::now()
        - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    ledger.unresolved(before, limit).await
}

/// Settles `entries`, calling `progress` after each.
pub async fn settle(
    pipeline: &Pipeline,
    entries: &[LedgerEntry],
    mut progress: impl FnMut(&LedgerEntry, &Outcome),
) -> ReconcileReport {
    let mut report = ReconcileReport {
        found: entries.len(),
        ..ReconcileReport::default()
    };
    for entry in entries {
        // No trace of its own: reconcile's attempts and calls are in the posting's.
        let context = AttemptContext {
            event_id: entry.event_id.clone(),
            trace_id: entry
                .trace_parent
                .as_deref()
                .and_then(crate::telemetry::trace_id_of)
                .map(str::to_owned),
            trace_parent: entry.trace_parent.clone(),
            seen_before: true,
            ..AttemptContext::default()
        };
        let outcome = pipeline.reconcile(&entry.key, &context).await;
        *report.outcomes.entry(outcome.label()).or_default() += 1;
        progress(entry, &outcome);
    }
    report
}

/// Postings one automatic round settles at most (the next round takes the rest).
const AUTO_BATCH: u32 = 100;

/// How long the fleet's reconcile lease lasts unless renewed: renewed after each posting, so a
/// worker that dies mid-round hands the round on within this.
const AUTO_LEASE: Duration = Duration::from_secs(60);

/// The lease one worker of the fleet holds while it settles (a key no posting can have: no
/// marketplace is called `bidorch` with such an id, and its lease lives beside theirs).
fn auto_key() -> PostingKey {
    PostingKey::new("bidorch", "~reconcile~auto").expect("a valid key")
}

/// The workers' automatic reconcile (`reconcile.auto`): every `auto_every`, the worker that
/// takes the fleet's reconcile lease settles the unresolved sends older than `older_than` as
/// `bidorch reconcile` would (a lookup first where the API has no idempotency keys). Only sends
/// of unknown fate are found — never a posting waiting out a Retry-After, the rate limit or a
/// pause — and the pipeline holds back every call to a paused marketplace, whose postings then
/// wait for the next round. Runs until aborted.
pub async fn keep_settling(
    pipeline: Arc<Pipeline>,
    locks: Arc<dyn LockStore>,
    ledger: Arc<dyn LedgerReports>,
    settings: ReconcileSettings,
) {
    loop {
        tokio::time::sleep(settings.auto_every).await;
        let lease = match locks.try_acquire(&auto_key(), AUTO_LEASE).await {
            Ok(Some(lease)) => lease,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(error = %crate::error::Chain(&e), "Reconcile lease not taken");
                continue;
            }
        };
        match unresolved(&*ledger, settings.older_than, AUTO_BATCH).await {
            Ok(entries) if !entries.is_empty() => {
                settle_round(&pipeline, &*locks, &lease, &entries).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %crate::error::Chain(&e),
                "Finding unresolved sends failed; trying again next round"
            ),
        }
        let _ = locks.release(&lease).await;
    }
}

/// Settles one round's postings while the lease stays ours, skipping a marketplace once it
/// turns out paused.
async fn settle_round(
    pipeline: &Pipeline,
    locks: &dyn LockStore,
    lease: &crate::lock::Lease,
    entries: &[LedgerEntry],
) {
    let mut paused = BTreeSet::new();
    let mut settled = 0usize;
    for entry in entries {
        if paused.contains(entry.key.marketplace()) {
            continue;
        }
        let report = settle(pipeline, std::slice::from_ref(entry), |entry, outcome| {
            tracing::info!(
                marketplace = entry.key.marketplace(),
                posting_id = entry.key.posting_id(),
                outcome = outcome.label(),
                "Automatic reconcile settled an unresolved send"
            );
            if matches!(outcome, Outcome::MarketplacePaused { .. }) {
                paused.insert(entry.key.marketplace().to_owned());
            }
        })
        .await;
        for (label, n) in &report.outcomes {
            metrics::counter!(crate::metrics::AUTO_RECONCILED, "outcome" => *label)
                .increment(*n as u64);
        }
        settled += report.found - report.unsettled();
        if !matches!(locks.extend(lease, AUTO_LEASE).await, Ok(true)) {
            // Another worker took the round over: it finds what is left.
            break;
        }
    }
    tracing::info!(
        found = entries.len(),
        settled,
        "Automatic reconcile round done"
    );
}
