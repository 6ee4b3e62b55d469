//! One posting's story (`bidorch inspect`): its ledger row — state, epoch, sends, the stored
//! request, reasons, bid id, times — its attempts with their trace ids, and who holds its lease.

use serde::Serialize;

use crate::ledger::{AttemptRecord, BidLedger, LedgerEntry, LedgerError, LedgerReports};
use crate::lock::{LockError, LockStore};
use crate::posting::PostingKey;

/// Why a story could not be told.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no such posting: {0} has never been claimed")]
    NotFound(String),
    #[error("reading the ledger")]
    Ledger(#[from] LedgerError),
    #[error("asking the lock store")]
    Lock(#[from] LockError),
}

/// The stored request, as `inspect` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RequestView {
    /// The API the body is written for (`contract`, `freelancer`).
    pub api: String,
    pub amount: String,
    pub currency: String,
    pub sha256: String,
    pub body: String,
}

/// One attempt, as `inspect` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AttemptView {
    pub epoch: i64,
    pub instance: String,
    pub event_id: String,
    pub trace_id: Option<String>,
    pub claim: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub result: Option<String>,
    pub http_status: Option<u16>,
    pub detail: Option<String>,
    /// For a send: `unknown`, `answered`, `not_sent` or `absent`.
    pub send: Option<String>,
}

/// Who holds the posting's lease right now.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: String,
    pub ttl_left_ms: u64,
}

/// A posting's story.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Story {
    pub key: String,
    pub state: String,
    pub epoch: i64,
    pub sends: u32,
    pub bid_id: Option<String>,
    pub detail: Option<String>,
    pub event_id: String,
    pub created_at: String,
    pub updated_at: String,
    pub sent_at: Option<String>,
    /// Since when a send's fate has been unknown (sent, no answer, not looked up since).
    pub unknown_since: Option<String>,
    /// The posting's trace: every marketplace call for it runs there (its first attempt's).
    pub trace_id: Option<String>,
    pub request: Option<RequestView>,
    pub attempts: Vec<AttemptView>,
    pub lease: Option<LeaseView>,
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Story {
    fn new(entry: LedgerEntry, attempts: Vec<AttemptRecord>, lease: Option<LeaseView>) -> Self {
        Self {
            key: entry.key.to_string(),
            state: entry.state.as_str().to_owned(),
            epoch: entry.epoch,
            sends: entry.sends,
            bid_id: entry.bid_id,
            detail: entry.detail,
            event_id: entry.event_id,
            created_at: time(entry.created_at),
            updated_at: time(entry.updated_at),
            sent_at: entry.sent_at.map(time),
            unknown_since: entry.unknown_since.map(time),
            trace_id: entry
                .trace_parent
                .as_deref()
                .and_then(crate::telemetry::trace_id_of)
                .map(str::to_owned),
            request: entry.request.map(|r| RequestView {
                api: r.api,
                amount: r.amount,
                currency: r.currency,
                sha256: r.sha256,
                body: r.body,
            }),
            attempts: attempts
                .into_iter()
                .map(|a| AttemptView {
                    epoch: a.epoch,
                    instance: a.instance,
                    event_id: a.event_id,
                    trace_id: a.trace_id,
                    claim: a.claim,
                    started_at: time(a.started_at),
                    finished_at: a.finished_at.map(time),
                    result: a.result,
                    http_status: a.http_status,
                    detail: a.detail,
                    send: a.send,
                })
                .collect(),
            lease,
        }
    }
}

/// Tells `key`'s story from the ledger and the lock store.
pub async fn story(
    ledger: &dyn BidLedger,
    reports: &dyn LedgerReports,
    locks: &dyn LockStore,
    key: &PostingKey,
) -> Result<Story, InspectError> {
    let entry = ledger
        .lookup(key)
        .await?
        .ok_or_else(|| InspectError::NotFound(key.to_string()))?;
    let attempts = reports.attempts(key).await?;
    let lease = locks.holder(key).await?.map(|h| LeaseView {
        holder: h.token,
        ttl_left_ms: u64::try_from(h.ttl_left.as_millis()).unwrap_or(u64::MAX),
    });
    Ok(Story::new(entry, attempts, lease))
}

/// Parses `MARKETPLACE:POSTING_ID` (the posting id may itself contain `:`).
pub fn parse_key(text: &str) -> Result<PostingKey, String> {
    let (marketplace, posting_id) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not MARKETPLACE:POSTING_ID (e.g. upwork:job_123)"))?;
    PostingKey::new(marketplace, posting_id)
        .map_err(|e| format!("{text:?} is not MARKETPLACE:POSTING_ID: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_at_the_first_colon() {
        let k = parse_key("upwork:job:123").unwrap();
        assert_eq!((k.marketplace(), k.posting_id()), ("upwork", "job:123"));
        assert!(
            parse_key("upwork")
                .unwrap_err()
                .contains("MARKETPLACE:POSTING_ID")
        );
        assert!(parse_key("Up Work:x").is_err());
    }
}
