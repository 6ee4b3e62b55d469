//! What both SQL backends share: error classification and turning a stored row into a
//! [`LedgerEntry`]. The statements themselves live with each backend (their dialects differ).

use super::{LedgerEntry, LedgerError, LedgerState};
use crate::posting::PostingKey;

/// How long a caller waits for a pooled connection (and, at start, for the first connection)
/// before the ledger counts as unavailable; bounded so an unreachable database fails the attempt
/// (retry with delay) instead of hanging the worker.
pub const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The columns every read selects, in this order.
pub type EntryRow = (String, i64, Option<String>, Option<String>);

/// Connecting failed; names the database by its redacted URL (never its password).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {url}")]
pub struct ConnectError {
    pub url: String,
    #[source]
    pub source: sqlx::Error,
}

/// A statement failed. Decoding problems mean the stored data is not what this code wrote
/// (corrupt); everything else — I/O, pool timeouts, server errors — is retryable, so the
/// worker fails closed and requeues with delay rather than guessing.
pub fn query_error(key: Option<&PostingKey>, e: sqlx::Error) -> LedgerError {
    match e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => LedgerError::Corrupt {
            key: key.map_or_else(|| "(aggregate)".to_owned(), ToString::to_string),
            problem: e.to_string(),
        },
        other => LedgerError::Unavailable(Box::new(other)),
    }
}

/// A migration failed. An unreachable database is still only unavailable (retry later); a
/// migration that the database refused, or a history that does not match the embedded
/// migrations, needs an operator.
pub fn migrate_error(e: sqlx::migrate::MigrateError) -> LedgerError {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(
            inner @ (sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed),
        ) => LedgerError::Unavailable(Box::new(inner)),
        other => LedgerError::Migration(Box::new(other)),
    }
}

/// Parses the `state` column, or reports the row as corrupt.
pub fn parse_state(key: &str, state: &str) -> Result<LedgerState, LedgerError> {
    LedgerState::parse(state).ok_or_else(|| LedgerError::Corrupt {
        key: key.to_owned(),
        problem: format!("unknown state {state:?}"),
    })
}

/// Builds the entry read back for `key`.
pub fn entry(key: &PostingKey, row: EntryRow) -> Result<LedgerEntry, LedgerError> {
    let (state, epoch, bid_id, detail) = row;
    Ok(LedgerEntry {
        key: key.clone(),
        state: parse_state(&key.to_string(), &state)?,
        epoch,
        bid_id,
        detail,
    })
}

/// Completes counts per state: every state appears once, in declaration order, zero if absent.
pub fn counts(rows: Vec<(String, i64)>) -> Result<Vec<(LedgerState, u64)>, LedgerError> {
    let mut out: Vec<(LedgerState, u64)> = [
        LedgerState::Pending,
        LedgerState::Placed,
        LedgerState::Skipped,
        LedgerState::Rejected,
    ]
    .into_iter()
    .map(|s| (s, 0))
    .collect();
    for (state, n) in rows {
        let state = parse_state("(aggregate)", &state)?;
        if let Some(slot) = out.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(out)
}

/// Explains a failed epoch-conditional write from the row as it is now: a final row wins, a
/// pending row under another epoch means ours was superseded.
pub fn fenced_after_miss(
    key: &PostingKey,
    epoch: i64,
    current: Option<LedgerEntry>,
) -> Result<super::Fenced, LedgerError> {
    match current {
        Some(entry) if entry.state.is_final() => Ok(super::Fenced::Final(entry)),
        Some(entry) if entry.epoch != epoch => Ok(super::Fenced::Superseded {
            current_epoch: entry.epoch,
        }),
        Some(_) => Err(LedgerError::Corrupt {
            key: key.to_string(),
            problem: format!("epoch {epoch} is current and pending, yet the write matched no row"),
        }),
        None => Err(LedgerError::Corrupt {
            key: key.to_string(),
            problem: format!("write for epoch {epoch} of a posting that was never claimed"),
        }),
    }
}
