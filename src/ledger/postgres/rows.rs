//! What `bidorch_claim`/`bidorch_finish`/`bidorch_lookup` return (rows of `bidorch_step`, after
//! an `o_kind` column), read back in batch order.
//!
//! Columns are read by position and only as far as the answer needs: a finish that was written
//! needs nothing but its verdict, a claim that sends needs its epoch and request. Reading every
//! column of every row by name was a sixth of the worker's ledger work.

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::super::sql::{self, Row};
use super::super::{Claim, ClaimRequest, Fenced, Intent, LedgerError, StoredRequest};
use crate::posting::PostingKey;

// Column positions: `o_kind`, then `bidorch_step`'s fields in order.
const KIND: usize = 0;
const IDX: usize = 1;
const RESULT: usize = 2;
const WRITTEN: usize = 3;
const EPOCH: usize = 4;
const STATE: usize = 5;
const SENDS: usize = 6;
const BID_ID: usize = 7;
const DETAIL: usize = 8;
const EVENT_ID: usize = 9;
const CREATED_AT: usize = 10;
const UPDATED_AT: usize = 11;
const SENT_AT: usize = 12;
const REQUEST_BODY: usize = 13;
const REQUEST_SHA256: usize = 14;
const REQUEST_AMOUNT: usize = 15;
const REQUEST_CURRENCY: usize = 16;
const TRACE_PARENT: usize = 17;
const REQUEST_API: usize = 18;
const UNKNOWN_SINCE: usize = 19;

/// One returned row: which call answered it (`c` claim, `f` finish, `l` lookup) and its position
/// in that call's batch, the rest read on demand.
pub(super) struct Step {
    pub(super) kind: String,
    pub(super) idx: i32,
    row: PgRow,
}

fn corrupt(key: &PostingKey, e: sqlx::Error) -> LedgerError {
    sql::query_error(Some(key), e)
}

impl Step {
    /// Reads a row's kind and position.
    pub(super) fn read(row: PgRow) -> Result<Self, LedgerError> {
        let head = |e| sql::query_error(None, e);
        Ok(Self {
            kind: row.try_get(KIND).map_err(head)?,
            idx: row.try_get(IDX).map_err(head)?,
            row,
        })
    }

    /// The whole ledger row, absent when the posting has none (a finish for nothing).
    pub(super) fn entry_row(&self, key: &PostingKey) -> Result<Option<Row>, LedgerError> {
        let r = &self.row;
        let get = |i| -> Result<Option<String>, LedgerError> {
            r.try_get(i).map_err(|e| corrupt(key, e))
        };
        let time = |i| -> Result<Option<DateTime<Utc>>, LedgerError> {
            r.try_get(i).map_err(|e| corrupt(key, e))
        };
        let epoch: Option<i64> = r.try_get(EPOCH).map_err(|e| corrupt(key, e))?;
        let (Some(epoch), Some(state), Some(created), Some(updated)) =
            (epoch, get(STATE)?, time(CREATED_AT)?, time(UPDATED_AT)?)
        else {
            return Ok(None);
        };
        let sends: Option<i32> = r.try_get(SENDS).map_err(|e| corrupt(key, e))?;
        Ok(Some(Row {
            o_epoch: epoch,
            o_state: state,
            o_sends: sends.unwrap_or(0),
            o_bid_id: get(BID_ID)?,
            o_detail: get(DETAIL)?,
            o_event_id: get(EVENT_ID)?.unwrap_or_default(),
            o_created_at: created,
            o_updated_at: updated,
            o_sent_at: time(SENT_AT)?,
            o_request_body: get(REQUEST_BODY)?,
            o_request_sha256: get(REQUEST_SHA256)?,
            o_request_amount: get(REQUEST_AMOUNT)?,
            o_request_currency: get(REQUEST_CURRENCY)?,
            o_trace_parent: get(TRACE_PARENT)?,
            o_request_api: get(REQUEST_API)?,
            o_unknown_since: time(UNKNOWN_SINCE)?,
        }))
    }

    /// What a finish of `key` at `epoch` did.
    pub(super) fn fenced(&self, key: &PostingKey, epoch: i64) -> Result<Fenced, LedgerError> {
        let written: Option<bool> = self.row.try_get(WRITTEN).map_err(|e| corrupt(key, e))?;
        if written == Some(true) {
            return Ok(Fenced::Written);
        }
        sql::fenced_of(key, epoch, false, self.entry_row(key)?)
    }

    /// What `claim` decided. A `send` stores exactly the request the claim brought (both of
    /// the claim's paths write the caller's request on the row), so that one is used rather
    /// than five columns decoded back; a `resend` sends the row's.
    pub(super) fn claim(&self, claim: &ClaimRequest) -> Result<Claim, LedgerError> {
        let key = &claim.key;
        let r = &self.row;
        let result: Option<String> = r.try_get(RESULT).map_err(|e| corrupt(key, e))?;
        let result = result.unwrap_or_default();
        match result.as_str() {
            "send" | "resend" => {
                let text = |i| -> Result<Option<String>, LedgerError> {
                    r.try_get(i).map_err(|e| corrupt(key, e))
                };
                let epoch: Option<i64> = r.try_get(EPOCH).map_err(|e| corrupt(key, e))?;
                let request = match (result.as_str(), &claim.intent) {
                    ("send", Intent::Bid(request)) => request.clone(),
                    _ => match (text(REQUEST_BODY)?, text(REQUEST_SHA256)?) {
                        (Some(body), Some(sha256)) => StoredRequest {
                            api: text(REQUEST_API)?.unwrap_or_else(|| "contract".to_owned()),
                            body,
                            sha256,
                            amount: text(REQUEST_AMOUNT)?.unwrap_or_default(),
                            currency: text(REQUEST_CURRENCY)?.unwrap_or_default(),
                        },
                        _ => {
                            return Err(LedgerError::Corrupt {
                                key: key.to_string(),
                                problem: "a send without a stored request".to_owned(),
                            });
                        }
                    },
                };
                Ok(Claim::Send {
                    epoch: epoch.ok_or_else(|| LedgerError::Corrupt {
                        key: key.to_string(),
                        problem: "a send without an epoch".to_owned(),
                    })?,
                    request,
                    resend: result == "resend",
                    trace_parent: text(TRACE_PARENT)?,
                })
            }
            "skipped" | "capped" => {
                let detail: Option<String> = r.try_get(DETAIL).map_err(|e| corrupt(key, e))?;
                Ok(Claim::Skipped {
                    reasons: sql::skip_reasons(detail.as_deref()),
                    capped: result == "capped",
                })
            }
            "nothing" => Ok(Claim::Nothing),
            other => {
                let row = self.entry_row(key)?.ok_or_else(|| LedgerError::Corrupt {
                    key: key.to_string(),
                    problem: "the claim returned no row".to_owned(),
                })?;
                sql::claim_of(key, other, row)
            }
        }
    }
}

/// Puts steps back in the order of the batch (the functions work in key order).
pub(super) fn in_order(mut steps: Vec<Step>, n: usize) -> Result<Vec<Step>, LedgerError> {
    steps.sort_by_key(|s| s.idx);
    if steps.len() != n || steps.iter().enumerate().any(|(i, s)| s.idx as usize != i) {
        return Err(LedgerError::Corrupt {
            key: "(batch)".to_owned(),
            problem: format!("{n} postings asked, {} answered", steps.len()),
        });
    }
    Ok(steps)
}
