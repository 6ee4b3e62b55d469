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
//! Ports: [`BidLedger`] (a posting's attempt: lookup, claim, finish) and [`LedgerReports`]
//! (reconcile, inspect, gauges). Backends implement [`LedgerBackend`] — whole batches in one
//! round trip — and the reports: [`PgBidLedger`] (production, `migrations/postgres/`, the claim
//! and finish as PL/pgSQL functions) and [`SqliteBidLedger`] (embedded mode, `migrations/sqlite/`,
//! the same steps in one immediate transaction), held to one contract suite
//! (`tests/it/ledger/`). [`Deadline`] bounds a backend's calls; [`Batched`] turns one into a
//! [`BidLedger`] by batching concurrent postings' calls. The composition root stacks them.

pub(crate) mod batch;
pub mod controls;
mod deadline;
pub mod lifecycle;
mod loopback;
mod migrations;
pub mod postgres;
pub(crate) mod sql;
pub mod sqlite;
mod types;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::posting::PostingKey;

pub use self::batch::Batched;
pub use self::controls::{
    AuditEntry, ControlStore, Pause, PauseState, Scope, WorkerBeat, WorkerSeen,
};
pub use self::deadline::Deadline;
pub use self::lifecycle::{LedgerSize, Pruned};
pub use self::postgres::PgBidLedger;
pub use self::sqlite::SqliteBidLedger;
pub use self::types::{
    AttemptRecord, BudgetClaim, Claim, ClaimRequest, Fenced, FinalOutcome, Finish, Intent,
    LedgerEntry, LedgerState, Pending, StoredRequest, sha256_hex,
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

/// The ledger as a posting's attempt uses it: one posting at a time. The embedded and production
/// ledgers both come as [`Batched`], which gathers the calls of concurrent postings into one
/// round trip of their [`LedgerBackend`].
#[async_trait]
pub trait BidLedger: Send + Sync + 'static {
    /// Reads one posting's row (`None` if it was never claimed).
    async fn lookup(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError>;

    /// Claims one posting (see the module docs).
    async fn claim(&self, claim: ClaimRequest) -> Result<Claim, LedgerError>;

    /// Ends one attempt: writes `finish` if `epoch` is still current and the row pending, and
    /// closes the attempt's history row. A rejection releases the posting's cap slot.
    async fn finish(
        &self,
        key: &PostingKey,
        epoch: i64,
        finish: Finish,
    ) -> Result<Fenced, LedgerError>;

    /// Checks the database answers (for `/readyz` and the worker's probe).
    async fn health(&self) -> Result<(), LedgerError>;
}

/// What operators and the worker's gauges read from the ledger.
#[async_trait]
pub trait LedgerReports: Send + Sync + 'static {
    /// Pending postings with a send of unknown fate (sent, no answer classified, not looked up
    /// since) that started before `before`, oldest first, at most `limit` (for `bidorch
    /// reconcile`).
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

    /// Postings recorded `placed` since `since`, by marketplace.
    async fn placed_since(&self, since: DateTime<Utc>) -> Result<Vec<(String, u64)>, LedgerError>;

    /// Rows matching `search`, latest change first, one page.
    async fn search(&self, search: &Search) -> Result<Vec<LedgerEntry>, LedgerError>;

    /// Credits spent on `marketplace` in the budget period starting `period_start`.
    async fn budget_spent(
        &self,
        marketplace: &str,
        period_start: chrono::NaiveDate,
    ) -> Result<rust_decimal::Decimal, LedgerError>;

    /// Deletes, in one short transaction, at most `batch` final rows whose outcome was written
    /// before `before`, oldest first, with their attempts, and the side tables' rows past it
    /// (audit entries, daily-cap days and budget periods over, workers not seen since).
    /// `pending` rows never. `None`: another pruner is at it (one at a time).
    async fn prune(&self, before: DateTime<Utc>, batch: u32)
    -> Result<Option<Pruned>, LedgerError>;

    /// What pruning at `before` would delete, counted (`ledger prune --dry-run`).
    async fn prunable(&self, before: DateTime<Utc>) -> Result<Pruned, LedgerError>;

    /// Rows by state and the oldest final row, cheap on a large ledger (the gauges).
    async fn size(&self) -> Result<LedgerSize, LedgerError>;
}

/// What the console's posting search asks for; every part optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Search {
    pub marketplace: Option<String>,
    /// The posting id starts with it.
    pub id_prefix: Option<String>,
    pub state: Option<LedgerState>,
    /// The detail (skip reasons, a rejection) contains it, case aside.
    pub reason: Option<String>,
    /// Last changed at or after.
    pub since: Option<DateTime<Utc>>,
    /// Last changed before.
    pub until: Option<DateTime<Utc>>,
    pub offset: u32,
    pub limit: u32,
}

impl Search {
    /// `text` with the `LIKE` wildcards escaped (`\` is the escape).
    pub fn like_escaped(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if matches!(c, '%' | '_' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
}

/// A database holding the ledger ([`PgBidLedger`], [`SqliteBidLedger`]): the calls of many
/// postings in one round trip and one transaction, and the reports.
#[async_trait]
pub trait LedgerBackend: LedgerReports {
    /// Reads postings' rows (`None` for a posting never claimed), in the order asked.
    async fn lookup_many(
        &self,
        keys: &[PostingKey],
    ) -> Result<Vec<Option<LedgerEntry>>, LedgerError>;

    /// Ends `finishes`, then makes `claims` (each under its row lock) — in one transaction
    /// (one round trip for the lot on PostgreSQL). Answers come in the order asked; a failure
    /// fails every member (fail closed).
    async fn steps_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
        claims: &[ClaimRequest],
    ) -> Result<(Vec<Fenced>, Vec<Claim>), LedgerError>;

    /// Checks the database answers.
    async fn health(&self) -> Result<(), LedgerError>;

    /// Claims postings, all in one transaction.
    async fn claim_many(&self, claims: &[ClaimRequest]) -> Result<Vec<Claim>, LedgerError> {
        Ok(self.steps_many(&[], claims).await?.1)
    }

    /// Ends attempts, all in one transaction.
    async fn finish_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
    ) -> Result<Vec<Fenced>, LedgerError> {
        Ok(self.steps_many(finishes, &[]).await?.0)
    }
}
