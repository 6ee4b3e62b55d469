//! `ledger.retention` at work: pruning the ledger batch by batch (the worker's background task
//! and `bidorch ledger prune`), and the ledger's size gauges.
//!
//! One pruner at a time across the fleet: each batch takes the ledger's pruner lock for its own
//! transaction only (no session state, so it works through a transaction-mode pooler), and a
//! worker that finds it taken leaves the round to its holder.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::LedgerSettings;
use crate::ledger::{LedgerError, LedgerReports, Pruned};

/// Where the window ends now: outcomes written before it are past retention.
pub fn cutoff(retention: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX)
}

/// Prunes batch after batch until nothing is left before `before`, calling `progress` with
/// each batch's counts. `None`: another pruner held the lock at the first batch (it is at
/// work; nothing was done here).
pub async fn prune_all(
    ledger: &dyn LedgerReports,
    before: DateTime<Utc>,
    batch: u32,
    mut progress: impl FnMut(&Pruned),
) -> Result<Option<Pruned>, LedgerError> {
    let mut total = Pruned::default();
    let mut first = true;
    loop {
        let Some(done) = ledger.prune(before, batch).await? else {
            return Ok((!first).then_some(total));
        };
        first = false;
        progress(&done);
        total.add(done);
        // A short batch is the last: what is left is locked by a claim or not yet old enough.
        if done.postings < u64::from(batch) && done.other < u64::from(batch) {
            return Ok(Some(total));
        }
        // Between batches, claims waiting on the ledger go first.
        tokio::task::yield_now().await;
    }
}

/// The worker's pruner: every `prune_every`, prunes what is past `retention`, then refreshes the
/// size gauges. Runs until aborted; a failure is logged and retried next round.
pub async fn keep_pruning(ledger: Arc<dyn LedgerReports>, settings: LedgerSettings) {
    metrics::gauge!(crate::metrics::LEDGER_RETENTION).set(settings.retention.as_secs_f64());
    loop {
        let before = cutoff(settings.retention);
        match prune_all(&*ledger, before, settings.prune_batch, count_pruned).await {
            Ok(Some(total)) if total.total() > 0 => tracing::info!(
                postings = total.postings,
                attempts = total.attempts,
                other = total.other,
                before = %before.to_rfc3339(),
                "Pruned ledger rows past ledger.retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %crate::error::Chain(&e),
                "Pruning the ledger failed; trying again next round"
            ),
        }
        measure(&*ledger).await;
        tokio::time::sleep(settings.prune_every).await;
    }
}

fn count_pruned(done: &Pruned) {
    for (table, n) in [
        ("postings", done.postings),
        ("attempts", done.attempts),
        ("other", done.other),
    ] {
        metrics::counter!(crate::metrics::LEDGER_PRUNED, "table" => table).increment(n);
    }
}

/// Sets `bidorch_ledger_rows` and `bidorch_ledger_oldest_row_seconds` from the ledger's size.
pub async fn measure(ledger: &dyn LedgerReports) {
    match ledger.size().await {
        Ok(size) => {
            for (state, n) in &size.by_state {
                metrics::gauge!(crate::metrics::LEDGER_ROWS, "state" => state.as_str())
                    .set(*n as f64);
            }
            let age = size.oldest_final.map_or(0.0, |t| {
                (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
            });
            metrics::gauge!(crate::metrics::LEDGER_OLDEST).set(age);
        }
        Err(e) => tracing::debug!(
            error = %crate::error::Chain(&e),
            "Measuring the ledger failed"
        ),
    }
}
