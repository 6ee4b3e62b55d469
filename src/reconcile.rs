//! `bidorch reconcile`: settles postings whose bid request was sent but whose outcome was never
//! recorded (a worker lost between the call and the record, a message parked after the send).
//!
//! Each is run through the worker's own lease, claim and fence, re-sending only the stored
//! request under its idempotency key — the contract answers a replay with the same `bid_id` —
//! and recording the answer under the epoch. So it is safe while workers run and from several
//! places at once: at most one holds a posting's lease, and a superseded attempt writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::app::System;
use crate::ledger::{LedgerEntry, LedgerError, LedgerReports};
use crate::pipeline::{AttemptContext, Outcome};

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
    system: &System,
    entries: &[LedgerEntry],
    mut progress: impl FnMut(&LedgerEntry, &Outcome),
) -> ReconcileReport {
    let pipeline = system.pipeline();
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
