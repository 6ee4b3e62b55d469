//! Small pieces every step of the pipeline uses: outcomes for a dependency that failed closed,
//! the pending finish, and the bounded `result` labels of the step spans.

use super::{Component, Outcome};
use crate::ledger::{Fenced, Finish, LedgerEntry, LedgerError};
use crate::lock::LockError;

pub(super) fn ledger_down(e: &LedgerError) -> Outcome {
    Outcome::Unavailable {
        component: Component::Ledger,
        error: crate::error::chain(e),
    }
}

pub(super) fn lock_store_down(e: &LockError) -> Outcome {
    Outcome::Unavailable {
        component: Component::LockStore,
        error: crate::error::chain(e),
    }
}

/// An attempt that ends with the row still pending.
pub(super) fn pending(result: &str, http_status: Option<u16>) -> Finish {
    Finish::Pending {
        result: result.to_owned(),
        http_status,
        detail: None,
    }
}

/// Bounded label of a fenced write, for the step spans.
pub(super) fn fence_result(result: &Result<Fenced, LedgerError>) -> &'static str {
    match result {
        Err(_) => "error",
        Ok(Fenced::Written) => "written",
        Ok(Fenced::Final(_)) => "final",
        Ok(Fenced::Superseded { .. }) => "superseded",
    }
}

/// Bounded label of the first ledger lookup.
pub(super) fn lookup_result(found: &Result<Option<LedgerEntry>, LedgerError>) -> &'static str {
    match found {
        Err(_) => "error",
        Ok(None) => "absent",
        Ok(Some(entry)) if entry.state.is_final() => "final",
        Ok(Some(entry)) if entry.sends > 0 => "sent",
        Ok(Some(_)) => "pending",
    }
}
