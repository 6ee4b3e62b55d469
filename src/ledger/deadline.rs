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
    AttemptRecord, BidLedger, Claim, ClaimRequest, Fenced, Finish, LedgerEntry, LedgerError,
    LedgerState,
};
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
    async fn lookup_many(
        &self,
        keys: &[PostingKey],
    ) -> Result<Vec<Option<LedgerEntry>>, LedgerError> {
        self.bounded(self.inner.lookup_many(keys)).await
    }

    async fn claim_many(&self, claims: &[ClaimRequest]) -> Result<Vec<Claim>, LedgerError> {
        self.bounded(self.inner.claim_many(claims)).await
    }

    async fn finish_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
    ) -> Result<Vec<Fenced>, LedgerError> {
        self.bounded(self.inner.finish_many(finishes)).await
    }

    async fn steps_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
        claims: &[ClaimRequest],
    ) -> Result<(Vec<Fenced>, Vec<Claim>), LedgerError> {
        self.bounded(self.inner.steps_many(finishes, claims)).await
    }

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
        async fn lookup_many(
            &self,
            _: &[PostingKey],
        ) -> Result<Vec<Option<LedgerEntry>>, LedgerError> {
            std::future::pending().await
        }
        async fn claim_many(&self, _: &[ClaimRequest]) -> Result<Vec<Claim>, LedgerError> {
            std::future::pending().await
        }
        async fn finish_many(
            &self,
            _: &[(PostingKey, i64, Finish)],
        ) -> Result<Vec<Fenced>, LedgerError> {
            std::future::pending().await
        }
        async fn unresolved(
            &self,
            _: DateTime<Utc>,
            _: u32,
        ) -> Result<Vec<LedgerEntry>, LedgerError> {
            std::future::pending().await
        }
        async fn count_unresolved(&self, _: DateTime<Utc>) -> Result<u64, LedgerError> {
            std::future::pending().await
        }
        async fn attempts(&self, _: &PostingKey) -> Result<Vec<AttemptRecord>, LedgerError> {
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
        let err = ledger.lookup(&key).await.unwrap_err();
        assert!(err.is_retryable());
        assert!(crate::error::chain(&err).contains("did not answer within 15s"));
    }
}
