//! The end of an attempt: `ledger.finish` under the attempt's epoch — a superseded holder writes
//! nothing, a final row is never overwritten — and what the ledger's answer means for the outcome.

use super::{Component, Outcome, Pipeline};
use crate::ledger::{Fenced, Finish, LedgerError, LedgerState, Pending};
use crate::posting::PostingKey;

impl Pipeline {
    /// Records the attempt's end after the call: `outcome` if written; if the row became final
    /// meanwhile, a duplicate (and a mismatch reported if our bid exists but the row says
    /// otherwise); superseded if a newer claim took over.
    pub(super) async fn finish_called(
        &self,
        key: &PostingKey,
        epoch: i64,
        finish: Finish,
        outcome: Outcome,
    ) -> Outcome {
        match self.finish(key, epoch, finish).await {
            Err(e) => Outcome::unavailable(Component::Ledger, &e),
            Ok(Fenced::Written) => outcome,
            Ok(Fenced::Final(entry)) => {
                report_mismatch(key, &outcome, entry.state);
                Outcome::Duplicate(entry.state)
            }
            Ok(Fenced::Superseded { .. }) => Outcome::Superseded,
        }
    }

    /// Ends the attempt pending for `reason` without having called: `outcome`, unless the row
    /// became final meanwhile.
    pub(super) async fn finish_uncalled(
        &self,
        key: &PostingKey,
        epoch: i64,
        reason: Pending,
        outcome: Outcome,
    ) -> Outcome {
        match self.finish(key, epoch, Finish::pending(reason)).await {
            Err(e) => Outcome::unavailable(Component::Ledger, &e),
            Ok(Fenced::Final(entry)) => Outcome::Duplicate(entry.state),
            Ok(Fenced::Written | Fenced::Superseded { .. }) => outcome,
        }
    }

    pub(super) async fn finish(
        &self,
        key: &PostingKey,
        epoch: i64,
        finish: Finish,
    ) -> Result<Fenced, LedgerError> {
        step!(
            "ledger.finish",
            self.ledger.finish(key, epoch, finish),
            |r: &Result<Fenced, LedgerError>| match r {
                Err(_) => "error",
                Ok(Fenced::Written) => "written",
                Ok(Fenced::Final(_)) => "final",
                Ok(Fenced::Superseded { .. }) => "superseded",
            }
        )
    }
}

/// Our bid exists (the marketplace said so), yet the row became final as something else: the
/// ledger tells a lie an operator must hear about. Never silent.
fn report_mismatch(key: &PostingKey, done: &Outcome, recorded: LedgerState) {
    if matches!(done, Outcome::Placed { .. }) && recorded != LedgerState::Placed {
        metrics::counter!(crate::metrics::MISMATCHES, "marketplace" => key.marketplace().to_owned())
            .increment(1);
        tracing::error!(
            marketplace = key.marketplace(),
            posting_id = key.posting_id(),
            recorded = recorded.as_str(),
            "The marketplace has our bid but the ledger says otherwise; reconcile by hand"
        );
    }
}
