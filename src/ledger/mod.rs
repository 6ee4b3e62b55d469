//! The ledger port: the durable record of each posting's decision, its bid request and its
//! story.
//!
//! One row per `(marketplace, posting_id)`. A row starts `pending`. A **claim** — one atomic step
//! under the row's lock — bumps its `epoch` (the fence) and decides, in this order: a final row
//! stays final; a request already sent is sent again, byte for byte (sticky: the policy is never
//! re-run once money may have moved); otherwise the attempt's intent — skip (recorded `skipped`)
//! or bid (a cap slot reserved if a daily cap is set, else `skipped`/`daily_cap`; the request
//! stored and `sends` bumped). Every later write of that attempt ([`BidLedger::finish`]) is
//! conditional on its epoch, so a superseded holder can neither record nor overwrite. Final
//! states — `placed`, `skipped`, `rejected` — are never overwritten. Each claim starts a row of
//! the attempt history (`bid_attempts`) that its finish closes.
//!
//! Backends: [`PgBidLedger`] (production, `migrations/postgres/`, the claim and finish as
//! PL/pgSQL functions taking whole batches) and [`SqliteBidLedger`] (embedded mode,
//! `migrations/sqlite/`, the same steps in one immediate transaction), chosen by
//! [`from_settings`], held to one contract suite (`tests/it/ledger/`).

pub(crate) mod batch;
mod deadline;
mod loopback;
mod migrations;
pub mod postgres;
mod sql;
pub mod sqlite;
mod types;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::{DatabaseSettings, LedgerKind};
use crate::posting::PostingKey;

pub use self::batch::Batching;
pub use self::deadline::Deadline;
pub use self::postgres::PgBidLedger;
pub use self::sqlite::SqliteBidLedger;
pub use self::types::{
    AttemptRecord, Claim, ClaimRequest, Fenced, FinalOutcome, Finish, Intent, LedgerEntry,
    LedgerState, StoredRequest, sha256_hex,
};

/// A ledger failure: the database could not answer or rejected the statement.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unreachable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("ledger migration failed")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("ledger row for {key} is corrupt: {problem}")]
    Corrupt { key: String, problem: String },
}

impl LedgerError {
    /// Whether retrying later may succeed (the worker then requeues with delay).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The durable bid ledger (PostgreSQL in production, SQLite for the embedded mode).
///
/// The batch methods are the primitives (one round trip, one transaction for many postings);
/// the single-posting ones are conveniences over them.
#[async_trait]
pub trait BidLedger: Send + Sync + 'static {
    /// Reads postings' rows (`None` for a posting never claimed), in the order asked.
    async fn lookup_many(
        &self,
        keys: &[PostingKey],
    ) -> Result<Vec<Option<LedgerEntry>>, LedgerError>;

    /// Claims postings (see the module docs), each under its row lock, all in one transaction.
    /// Results come in the order asked; a failure fails every member (fail closed).
    async fn claim_many(&self, claims: &[ClaimRequest]) -> Result<Vec<Claim>, LedgerError>;

    /// Ends attempts: for each `(key, epoch, finish)`, writes it if `epoch` is still current
    /// and the row pending, and closes the attempt's history row. A rejection releases the
    /// posting's cap slot.
    async fn finish_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
    ) -> Result<Vec<Fenced>, LedgerError>;

    /// Ends `finishes`, then makes `claims` — in one transaction where the backend can (one
    /// round trip for the lot on PostgreSQL). Answers come in the order asked; a failure fails
    /// every member. The default makes the two calls one after the other.
    async fn steps_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
        claims: &[ClaimRequest],
    ) -> Result<(Vec<Fenced>, Vec<Claim>), LedgerError> {
        let fenced = if finishes.is_empty() {
            Vec::new()
        } else {
            self.finish_many(finishes).await?
        };
        let claimed = if claims.is_empty() {
            Vec::new()
        } else {
            self.claim_many(claims).await?
        };
        Ok((fenced, claimed))
    }

    /// Pending postings whose request was sent (possibly) but never recorded, sent before
    /// `before`, oldest first, at most `limit` (for `bidorch reconcile`).
    async fn unresolved(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, LedgerError>;

    /// How many postings [`unresolved`](Self::unresolved) would find (the gauge).
    async fn count_unresolved(&self, before: DateTime<Utc>) -> Result<u64, LedgerError>;

    /// A posting's attempt history, oldest first.
    async fn attempts(&self, key: &PostingKey) -> Result<Vec<AttemptRecord>, LedgerError>;

    /// How many rows are in each state: all four states, in declaration order, zero if none.
    async fn counts_by_state(&self) -> Result<Vec<(LedgerState, u64)>, LedgerError>;

    /// Checks the database answers (for `/readyz`).
    async fn health(&self) -> Result<(), LedgerError>;

    /// Reads one posting's row.
    async fn lookup(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        let found = self.lookup_many(std::slice::from_ref(key)).await?;
        Ok(found.into_iter().next().flatten())
    }

    /// Claims one posting.
    async fn claim(&self, claim: &ClaimRequest) -> Result<Claim, LedgerError> {
        let mut claimed = self.claim_many(std::slice::from_ref(claim)).await?;
        claimed.pop().ok_or_else(|| LedgerError::Corrupt {
            key: claim.key.to_string(),
            problem: "the claim returned nothing".to_owned(),
        })
    }

    /// Ends one attempt.
    async fn finish(
        &self,
        key: &PostingKey,
        epoch: i64,
        finish: Finish,
    ) -> Result<Fenced, LedgerError> {
        let mut done = self.finish_many(&[(key.clone(), epoch, finish)]).await?;
        done.pop().ok_or_else(|| LedgerError::Corrupt {
            key: key.to_string(),
            problem: "the finish returned nothing".to_owned(),
        })
    }
}

/// Opens the ledger `settings.kind` names and applies its migrations — what worker start,
/// `bidorch migrate` and the demo need. PostgreSQL uses `url`, `schema` and `max_connections`;
/// SQLite uses `url` (`sqlite://file.db` or `sqlite::memory:`) and `max_connections`.
/// Every call of it is bounded by `database.call_timeout` ([`Deadline`]), and concurrent
/// single-posting calls share round trips ([`Batching`]).
pub async fn from_settings(settings: &DatabaseSettings) -> Result<Arc<dyn BidLedger>, LedgerError> {
    let ledger: Arc<dyn BidLedger> = match settings.kind {
        LedgerKind::Postgres => {
            let ledger = PgBidLedger::connect_and_migrate(settings).await?;
            // As many connections as a busy worker's lanes use at once (a batch of steps in
            // flight and the next, lookups likewise). A cold start is no reason to refuse one.
            let busy = u32::try_from(batch::LANE.in_flight * 2).unwrap_or(u32::MAX);
            if let Err(e) = ledger.warm_up(busy).await {
                tracing::warn!(
                    error = %crate::error::Chain(&e),
                    "Ledger warm-up failed; the first postings may be slower"
                );
            }
            Arc::new(ledger)
        }
        LedgerKind::Sqlite => {
            let ledger =
                SqliteBidLedger::connect_with(settings.url.expose(), settings.max_connections)
                    .await?;
            ledger.migrate().await?;
            Arc::new(ledger)
        }
    };
    let bounded: Arc<dyn BidLedger> = Arc::new(Deadline::new(ledger, settings.call_timeout));
    Ok(Arc::new(Batching::new(bounded)))
}
