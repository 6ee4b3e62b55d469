//! [`Deadline`]: every ledger call bounded on the client side, so a database that stops
//! answering mid-statement (a half-open TCP connection, a server frozen by an outage) fails the
//! call as unavailable — the worker then pauses and probes — instead of holding a posting (and
//! its lease) forever. The server bounds its side too (`statement_timeout`, `lock_timeout`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    AttemptRecord, Claim, ClaimRequest, Fenced, Finish, LedgerBackend, LedgerEntry, LedgerError,
    LedgerReports, LedgerSize, LedgerState, Pruned, Search,
};
use crate::posting::PostingKey;

/// A ledger whose every call answers within `after`, or fails as unavailable.
pub struct Deadline {
    inner: Arc<dyn LedgerBackend>,
    after: Duration,
}

/// No answer within the deadline.
#[derive(Debug, thiserror::Error)]
#[error("the ledger did not answer within {}", humantime::format_duration(*.0))]
struct NoAnswer(Duration);

impl Deadline {
    /// Bounds every call of `inner` by `after`.
    pub fn new(inner: Arc<dyn LedgerBackend>, after: Duration) -> Self {
        Self { inner, after }
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        tokio::time::timeout(self.after, call)
            .await
            .unwrap_or_else(|_| Err(LedgerError::Unavailable(Box::new(NoAnswer(self.after)))))
    }
}

#[async_trait]
impl LedgerBackend for Deadline {
    async fn lookup_many(
        &self,
        keys: &[PostingKey],
    ) -> Result<Vec<Option<LedgerEntry>>, LedgerError> {
        self.bounded(self.inner.lookup_many(keys)).await
    }

    async fn steps_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
        claims: &[ClaimRequest],
    ) -> Result<(Vec<Fenced>, Vec<Claim>), LedgerError> {
        self.bounded(self.inner.steps_many(finishes, claims)).await
    }

    async fn health(&self) -> Result<(), LedgerError> {
        self.bounded(self.inner.health()).await
    }
}

#[async_trait]
impl LedgerReports for Deadline {
    async fn unresolved(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        self.bounded(self.inner.unresolved(before, limit)).await
    }

    async fn count_unresolved(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        self.bounded(self.inner.count_unresolved(before)).await
    }

    async fn attempts(&self, key: &PostingKey) -> Result<Vec<AttemptRecord>, LedgerError> {
        self.bounded(self.inner.attempts(key)).await
    }

    async fn counts_by_state(&self) -> Result<Vec<(LedgerState, u64)>, LedgerError> {
        self.bounded(self.inner.counts_by_state()).await
    }

    async fn placed_since(&self, since: DateTime<Utc>) -> Result<Vec<(String, u64)>, LedgerError> {
        self.bounded(self.inner.placed_since(since)).await
    }

    async fn search(&self, search: &Search) -> Result<Vec<LedgerEntry>, LedgerError> {
        self.bounded(self.inner.search(search)).await
    }

    async fn budget_spent(
        &self,
        marketplace: &str,
        period_start: chrono::NaiveDate,
    ) -> Result<rust_decimal::Decimal, LedgerError> {
        self.bounded(self.inner.budget_spent(marketplace, period_start))
            .await
    }

    async fn prune(
        &self,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<Option<Pruned>, LedgerError> {
        self.bounded(self.inner.prune(before, batch)).await
    }

    async fn prunable(&self, before: DateTime<Utc>) -> Result<Pruned, LedgerError> {
        self.bounded(self.inner.prunable(before)).await
    }

    async fn size(&self) -> Result<LedgerSize, LedgerError> {
        self.bounded(self.inner.size()).await
    }
}
