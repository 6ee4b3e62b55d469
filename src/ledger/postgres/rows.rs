//! What `bidorch_claim`/`bidorch_finish`/`bidorch_lookup` return, read back into ledger rows in
//! batch order.

use super::super::LedgerError;
use chrono::{DateTime, Utc};

use super::super::sql::{self, Row};

/// One returned row with its position in the batch and the step's verdict.
pub(super) struct Step {
    /// Which call answered: `c` claim, `f` finish, `l` lookup.
    pub(super) o_kind: String,
    pub(super) o_idx: i32,
    pub(super) o_result: Option<String>,
    pub(super) o_written: Option<bool>,
    pub(super) row: RowOrNull,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Step {
    fn from_row(r: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row as _;
        Ok(Self {
            o_kind: r.try_get("o_kind")?,
            o_idx: r.try_get("o_idx")?,
            o_result: r.try_get("o_result")?,
            o_written: r.try_get("o_written")?,
            row: <RowOrNull as sqlx::FromRow<sqlx::postgres::PgRow>>::from_row(r)?,
        })
    }
}

/// The row part of a step, absent when the posting has no row (a finish for nothing).
pub(super) struct RowOrNull {
    o_epoch: Option<i64>,
    o_state: Option<String>,
    o_sends: Option<i32>,
    o_bid_id: Option<String>,
    o_detail: Option<String>,
    o_event_id: Option<String>,
    o_created_at: Option<DateTime<Utc>>,
    o_updated_at: Option<DateTime<Utc>>,
    o_sent_at: Option<DateTime<Utc>>,
    o_request_body: Option<String>,
    o_request_sha256: Option<String>,
    o_request_amount: Option<String>,
    o_request_currency: Option<String>,
}

sql::from_row!(RowOrNull {
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
});

impl RowOrNull {
    pub(super) fn row(self) -> Option<Row> {
        Some(Row {
            o_epoch: self.o_epoch?,
            o_state: self.o_state?,
            o_sends: self.o_sends.unwrap_or(0),
            o_bid_id: self.o_bid_id,
            o_detail: self.o_detail,
            o_event_id: self.o_event_id.unwrap_or_default(),
            o_created_at: self.o_created_at?,
            o_updated_at: self.o_updated_at?,
            o_sent_at: self.o_sent_at,
            o_request_body: self.o_request_body,
            o_request_sha256: self.o_request_sha256,
            o_request_amount: self.o_request_amount,
            o_request_currency: self.o_request_currency,
        })
    }
}

/// Puts steps back in the order of the batch (the functions lock in key order).
pub(super) fn in_order(mut steps: Vec<Step>, n: usize) -> Result<Vec<Step>, LedgerError> {
    steps.sort_by_key(|s| s.o_idx);
    if steps.len() != n || steps.iter().enumerate().any(|(i, s)| s.o_idx as usize != i) {
        return Err(LedgerError::Corrupt {
            key: "(batch)".to_owned(),
            problem: format!("{n} postings asked, {} answered", steps.len()),
        });
    }
    Ok(steps)
}
