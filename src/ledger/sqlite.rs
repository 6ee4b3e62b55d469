//! SQLite ledger (embedded mode).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{BidLedger, Claim, Fenced, FinalOutcome, LedgerEntry, LedgerError};
use crate::posting::PostingKey;

/// The ledger in SQLite (TO BE IMPLEMENTED by the ledger work).
pub struct SqliteBidLedger {}

#[async_trait]
impl BidLedger for SqliteBidLedger {
    async fn lookup(&self, _key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        todo!()
    }
    async fn claim(&self, _key: &PostingKey, _event_id: &str) -> Result<Claim, LedgerError> {
        todo!()
    }
    async fn mark_sending(&self, _key: &PostingKey, _epoch: i64) -> Result<Fenced, LedgerError> {
        todo!()
    }
    async fn record(
        &self,
        _key: &PostingKey,
        _epoch: i64,
        _outcome: &FinalOutcome,
    ) -> Result<Fenced, LedgerError> {
        todo!()
    }
    async fn placed_since(&self, _since: DateTime<Utc>) -> Result<u64, LedgerError> {
        todo!()
    }
    async fn health(&self) -> Result<(), LedgerError> {
        todo!()
    }
}
