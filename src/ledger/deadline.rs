//! [`Deadline`]: every ledger call bounded on the client side, so a database that stops
//! answering mid-statement (a half-open TCP connection, a server frozen by an outage) fails the
//! call as unavailable — the worker then pauses and probes — instead of holding a posting (and
//! its lease) forever. The server bounds its side too (`statement_timeout`, `lock_timeout`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{BidLedger, Claim, Fenced, FinalOutcome, LedgerEntry, LedgerError, LedgerState};
use crate::posting::PostingKey;

/// A ledger whose every call answers within `after`, or fails as unavailable.
pub struct Deadline {
    inner: Arc<dyn BidLedger>,
    after: Duration,
}

/// No answer within the deadline.
#[derive(Debug, thiserror::Error)]
#[error("the ledger did not answer within {}", humantime::format_duration(*.0))]
struct NoAnswer(Duration);

impl Deadline {
    /// Bounds every call of `inner` by `after`.
    pub fn new(inner: Arc<dyn BidLedger>, after: Duration) -> Self {
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
impl BidLedger for Deadline {
    async fn lookup(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        self.bounded(self.inner.lookup(key)).await
    }

    async fn claim(&self, key: &PostingKey, event_id: &str) -> Result<Claim, LedgerError> {
        self.bounded(self.inner.claim(key, event_id)).await
    }

    async fn mark_sending(&self, key: &PostingKey, epoch: i64) -> Result<Fenced, LedgerError> {
        self.bounded(self.inner.mark_sending(key, epoch)).await
    }

    async fn record(
        &self,
        key: &PostingKey,
        epoch: i64,
        outcome: &FinalOutcome,
    ) -> Result<Fenced, LedgerError> {
        self.bounded(self.inner.record(key, epoch, outcome)).await
    }

    async fn placed_since(&self, since: DateTime<Utc>) -> Result<u64, LedgerError> {
        self.bounded(self.inner.placed_since(since)).await
    }

    async fn counts_by_state(&self) -> Result<Vec<(LedgerState, u64)>, LedgerError> {
        self.bounded(self.inner.counts_by_state()).await
    }

    async fn health(&self) -> Result<(), LedgerError> {
        self.bounded(self.inner.health()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger whose database never answers (what a frozen connection looks like from here).
    struct Silent;

    #[async_trait]
    impl BidLedger for Silent {
        async fn lookup(&self, _: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
            std::future::pending().await
        }
        async fn claim(&self, _: &PostingKey, _: &str) -> Result<Claim, LedgerError> {
            std::future::pending().await
        }
        async fn mark_sending(&self, _: &PostingKey, _: i64) -> Result<Fenced, LedgerError> {
            std::future::pending().await
        }
        async fn record(
            &self,
            _: &PostingKey,
            _: i64,
            _: &FinalOutcome,
        ) -> Result<Fenced, LedgerError> {
            std::future::pending().await
        }
        async fn placed_since(&self, _: DateTime<Utc>) -> Result<u64, LedgerError> {
            std::future::pending().await
        }
        async fn counts_by_state(&self) -> Result<Vec<(LedgerState, u64)>, LedgerError> {
            std::future::pending().await
        }
        async fn health(&self) -> Result<(), LedgerError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_without_an_answer_fails_as_unavailable_at_the_deadline() {
        let ledger = Deadline::new(Arc::new(Silent), Duration::from_secs(15));
        let key = PostingKey::new("upwork", "p").unwrap();
        let err = ledger.claim(&key, "e").await.unwrap_err();
        assert!(err.is_retryable());
        assert!(crate::error::chain(&err).contains("did not answer within 15s"));
    }
}
