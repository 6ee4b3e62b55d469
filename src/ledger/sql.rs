//! What both SQL backends share: error classification, the row they read back, and turning
//! what a step returned into a [`Claim`] or a [`Fenced`].
//! The statements themselves live with each backend (their dialects differ).

use chrono::{DateTime, Utc};

use super::{Claim, Fenced, LedgerEntry, LedgerError, LedgerState, StoredRequest};
use crate::posting::PostingKey;

/// How long a caller waits for a pooled connection (and, at start, for the first connection)
/// before the ledger counts as unavailable; bounded so an unreachable database fails the attempt
/// (retry with delay) instead of hanging the worker.
pub const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Implements `sqlx::FromRow` for a struct of named columns, for both backends' rows (the
/// `derive` feature would bring sqlx's proc-macro crate, and with it every driver, back into
/// the build).
macro_rules! from_row {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $ty {
            fn from_row(r: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok(Self { $($field: r.try_get(stringify!($field))?),* })
            }
        }
        impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for $ty {
            fn from_row(r: &'r sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok(Self { $($field: r.try_get(stringify!($field))?),* })
            }
        }
    };
}

/// A row as both backends read it back (`o_*` columns of the PostgreSQL functions, the same
/// names selected by SQLite).
#[derive(Debug)]
pub struct Row {
    pub o_epoch: i64,
    pub o_state: String,
    pub o_sends: i32,
    pub o_bid_id: Option<String>,
    pub o_detail: Option<String>,
    pub o_event_id: String,
    pub o_created_at: DateTime<Utc>,
    pub o_updated_at: DateTime<Utc>,
    pub o_sent_at: Option<DateTime<Utc>>,
    pub o_request_body: Option<String>,
    pub o_request_sha256: Option<String>,
    pub o_request_amount: Option<String>,
    pub o_request_currency: Option<String>,
    pub o_trace_parent: Option<String>,
    pub o_request_api: Option<String>,
    pub o_unknown_since: Option<DateTime<Utc>>,
}

from_row!(Row {
    o_epoch,
    o_state,
    o_sends,
    o_bid_id,
    o_detail,
    o_event_id,
    o_created_at,
    o_updated_at,
    o_sent_at,
    o_request_body,
    o_request_sha256,
    o_request_amount,
    o_request_currency,
    o_trace_parent,
    o_request_api,
    o_unknown_since,
});

/// The columns of [`Row`] as a select list over `bid_ledger`.
pub const ROW_COLUMNS: &str = "epoch AS o_epoch, state AS o_state, sends AS o_sends, \
     bid_id AS o_bid_id, detail AS o_detail, event_id AS o_event_id, \
     created_at AS o_created_at, updated_at AS o_updated_at, sent_at AS o_sent_at, \
     request_body AS o_request_body, request_sha256 AS o_request_sha256, \
     request_amount AS o_request_amount, request_currency AS o_request_currency, \
     trace_parent AS o_trace_parent, request_api AS o_request_api, \
     unknown_since AS o_unknown_since";

impl Row {
    /// The entry for `key`.
    pub fn entry(self, key: &PostingKey) -> Result<LedgerEntry, LedgerError> {
        let request = match (self.o_request_body, self.o_request_sha256) {
            (Some(body), Some(sha256)) => Some(StoredRequest {
                // Requests stored before the API was recorded were all the contract's.
                api: self.o_request_api.unwrap_or_else(|| "contract".to_owned()),
                body,
                sha256,
                amount: self.o_request_amount.unwrap_or_default(),
                currency: self.o_request_currency.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(LedgerEntry {
            key: key.clone(),
            state: parse_state(&key.to_string(), &self.o_state)?,
            epoch: self.o_epoch,
            sends: u32::try_from(self.o_sends).unwrap_or(0),
            bid_id: self.o_bid_id,
            detail: self.o_detail,
            request,
            event_id: self.o_event_id,
            created_at: self.o_created_at,
            updated_at: self.o_updated_at,
            sent_at: self.o_sent_at,
            unknown_since: self.o_unknown_since,
            trace_parent: self.o_trace_parent,
        })
    }
}

/// A row with its key columns (`marketplace`, `posting_id`) before the [`Row`] ones.
pub fn keyed_entry<R>(r: &R) -> Result<LedgerEntry, LedgerError>
where
    R: sqlx::Row,
    for<'a> Row: sqlx::FromRow<'a, R>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let marketplace: String = r.try_get("marketplace").map_err(|e| query_error(None, e))?;
    let posting_id: String = r.try_get("posting_id").map_err(|e| query_error(None, e))?;
    let key = PostingKey::new(&marketplace, &posting_id).map_err(|e| LedgerError::Corrupt {
        key: format!("{marketplace}:{posting_id}"),
        problem: e.to_string(),
    })?;
    <Row as sqlx::FromRow<R>>::from_row(r)
        .map_err(|e| query_error(Some(&key), e))?
        .entry(&key)
}

/// An attempt history row as both backends read it.
#[derive(Debug)]
pub struct AttemptRow {
    pub epoch: i64,
    pub instance: String,
    pub event_id: String,
    pub trace_id: Option<String>,
    pub claim: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<String>,
    pub http_status: Option<i32>,
    pub detail: Option<String>,
    pub send: Option<String>,
}

from_row!(AttemptRow {
    epoch,
    instance,
    event_id,
    trace_id,
    claim,
    started_at,
    finished_at,
    result,
    http_status,
    detail,
    send,
});

impl AttemptRow {
    /// The record.
    pub fn record(self) -> super::AttemptRecord {
        super::AttemptRecord {
            epoch: self.epoch,
            instance: self.instance,
            event_id: self.event_id,
            trace_id: self.trace_id,
            claim: self.claim,
            started_at: self.started_at,
            finished_at: self.finished_at,
            result: self.result,
            http_status: self.http_status.and_then(|s| u16::try_from(s).ok()),
            detail: self.detail,
            send: self.send,
        }
    }
}

/// What the claim step decided (`o_result`), with the row after it.
pub fn claim_of(key: &PostingKey, result: &str, row: Row) -> Result<Claim, LedgerError> {
    let entry = row.entry(key)?;
    let corrupt = |problem: &str| LedgerError::Corrupt {
        key: key.to_string(),
        problem: problem.to_owned(),
    };
    Ok(match result {
        "final" => Claim::Final(entry),
        "nothing" => Claim::Nothing,
        "send" | "resend" => Claim::Send {
            epoch: entry.epoch,
            request: entry
                .request
                .ok_or_else(|| corrupt("a send without a stored request"))?,
            resend: result == "resend",
            trace_parent: entry.trace_parent,
        },
        "lookup" => Claim::Verify {
            epoch: entry.epoch,
            request: entry
                .request
                .ok_or_else(|| corrupt("a verify without a stored request"))?,
            sent_at: entry.sent_at,
            trace_parent: entry.trace_parent,
        },
        "skipped" | "capped" => Claim::Skipped {
            reasons: skip_reasons(entry.detail.as_deref()),
            capped: result == "capped",
        },
        other => return Err(corrupt(&format!("unknown claim result {other:?}"))),
    })
}

/// The reasons of a skipped row, stored comma-separated in its `detail`.
pub fn skip_reasons(detail: Option<&str>) -> Vec<String> {
    detail
        .unwrap_or_default()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What a finish did: written, or why not (the row as it is now).
pub fn fenced_of(
    key: &PostingKey,
    epoch: i64,
    written: bool,
    row: Option<Row>,
) -> Result<Fenced, LedgerError> {
    if written {
        return Ok(Fenced::Written);
    }
    match row.map(|r| r.entry(key)).transpose()? {
        Some(entry) if entry.state.is_final() => Ok(Fenced::Final(Box::new(entry))),
        Some(entry) if entry.epoch != epoch => Ok(Fenced::Superseded {
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

/// A `bid_workers` row (its columns in the table's order, from `instance`).
pub fn worker_seen<R>(r: &R) -> Result<super::WorkerSeen, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i32: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let auto: String = r.try_get(7)?;
    let in_flight: i32 = r.try_get(6)?;
    Ok(super::WorkerSeen {
        beat: super::WorkerBeat {
            instance: r.try_get(0)?,
            host: r.try_get(1)?,
            version: r.try_get(2)?,
            started_at: r.try_get(3)?,
            generation: r.try_get(5)?,
            in_flight: u32::try_from(in_flight).unwrap_or(0),
            auto_paused: auto
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        },
        seen_at: r.try_get(4)?,
    })
}

/// A stored decimal (`None`: nothing spent yet), or the row is corrupt.
pub fn decimal_or_zero(text: Option<String>) -> Result<rust_decimal::Decimal, LedgerError> {
    match text {
        None => Ok(rust_decimal::Decimal::ZERO),
        Some(t) => t.parse().map_err(|_| LedgerError::Corrupt {
            key: "(budget)".to_owned(),
            problem: format!("spent {t:?} is not a decimal"),
        }),
    }
}
