//! The ledger port: the durable record of each posting's decision and bid.
//!
//! One row per `(marketplace, posting_id)`. A row starts `pending`; each claim bumps its `epoch`
//! (the fence), and every later write of that attempt is conditional on the epoch it claimed, so a
//! superseded holder can neither record nor reach the marketplace. Final states — `placed`,
//! `skipped`, `rejected` — are never overwritten.
//!
//! Backends: [`PgBidLedger`] (production, `migrations/postgres/`) and [`SqliteBidLedger`]
//! (embedded mode, `migrations/sqlite/`, same version numbers), chosen by [`from_settings`].
//! Both run the same statements — an atomic upsert for `claim`, `UPDATE .. WHERE epoch = $e AND
//! state = 'pending'` for every later write — and pass the same contract suite (`tests/ledger.rs`).

mod deadline;
mod migrations;
pub mod postgres;
mod sql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::{DatabaseSettings, LedgerKind};
use crate::posting::PostingKey;

pub use self::deadline::Deadline;
pub use self::postgres::PgBidLedger;
pub use self::sqlite::SqliteBidLedger;

/// State of a ledger row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LedgerState {
    Pending,
    Placed,
    Skipped,
    Rejected,
}

impl LedgerState {
    /// The text stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Placed => "placed",
            Self::Skipped => "skipped",
            Self::Rejected => "rejected",
        }
    }

    /// Parses the `state` column.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "placed" => Self::Placed,
            "skipped" => Self::Skipped,
            "rejected" => Self::Rejected,
            _ => return None,
        })
    }

    /// Whether this state is final (never overwritten).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// A ledger row as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub key: PostingKey,
    pub state: LedgerState,
    pub epoch: i64,
    /// Marketplace bid id, for `placed`.
    pub bid_id: Option<String>,
    /// Skip reasons (comma-separated) or the rejection's status and body excerpt.
    pub detail: Option<String>,
}

/// Result of claiming a posting inside its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This attempt owns epoch `epoch`; all its writes must carry it.
    Claimed { epoch: i64 },
    /// The posting already has a final outcome; nothing was changed.
    Final(LedgerEntry),
}

/// A final outcome to record for an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalOutcome {
    /// A bid exists: `bid_id` from a 201/200, or `None` after a 409 (placed under another key).
    Placed {
        bid_id: Option<String>,
        detail: Option<String>,
    },
    /// The policy said no; the reasons are recorded.
    Skipped { reasons: Vec<String> },
    /// The marketplace refused the bid permanently.
    Rejected { status: u16, body_excerpt: String },
}

impl FinalOutcome {
    /// The state this outcome writes.
    pub fn state(&self) -> LedgerState {
        match self {
            Self::Placed { .. } => LedgerState::Placed,
            Self::Skipped { .. } => LedgerState::Skipped,
            Self::Rejected { .. } => LedgerState::Rejected,
        }
    }

    /// The `bid_id` column value.
    pub fn bid_id(&self) -> Option<&str> {
        match self {
            Self::Placed { bid_id, .. } => bid_id.as_deref(),
            _ => None,
        }
    }

    /// The `detail` column value.
    pub fn detail(&self) -> Option<String> {
        match self {
            Self::Placed { detail, .. } => detail.clone(),
            Self::Skipped { reasons } => Some(reasons.join(",")),
            Self::Rejected {
                status,
                body_excerpt,
            } => Some(format!("{status}: {body_excerpt}")),
        }
    }
}

/// Result of an epoch-conditional write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// The write happened: the epoch was still ours and the row still `pending`.
    Written,
    /// A newer claim superseded ours (row still pending under a higher epoch); nothing written.
    Superseded { current_epoch: i64 },
    /// The row is already final; nothing written.
    Final(LedgerEntry),
}

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
#[async_trait]
pub trait BidLedger: Send + Sync + 'static {
    /// Reads a posting's row, if any.
    async fn lookup(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError>;

    /// Inserts the row as `pending` with epoch 1, or bumps the epoch of a `pending` row.
    /// A final row is returned unchanged as [`Claim::Final`]. Concurrent claims get distinct epochs.
    async fn claim(&self, key: &PostingKey, event_id: &str) -> Result<Claim, LedgerError>;

    /// Marks that attempt `epoch` is about to call the marketplace, if the epoch is still current
    /// and the row still pending. This is the fence right before the bid.
    async fn mark_sending(&self, key: &PostingKey, epoch: i64) -> Result<Fenced, LedgerError>;

    /// Records a final outcome for attempt `epoch`, if the epoch is still current and the row pending.
    async fn record(
        &self,
        key: &PostingKey,
        epoch: i64,
        outcome: &FinalOutcome,
    ) -> Result<Fenced, LedgerError>;

    /// How many bids were placed since `since` (for `bidding.daily_bid_cap`).
    async fn placed_since(&self, since: DateTime<Utc>) -> Result<u64, LedgerError>;

    /// How many rows are in each state: all four states, in declaration order, zero if none
    /// (for the demo summary and the end-to-end checks).
    async fn counts_by_state(&self) -> Result<Vec<(LedgerState, u64)>, LedgerError>;

    /// Checks the database answers (for `/readyz`).
    async fn health(&self) -> Result<(), LedgerError>;
}

/// Opens the ledger `settings.kind` names and applies its migrations — what worker start,
/// `bidorch migrate` and the demo need. PostgreSQL uses `url`, `schema` and `max_connections`;
/// SQLite uses `url` (`sqlite://file.db` or `sqlite::memory:`) and `max_connections`.
/// Every call of it is bounded by `database.call_timeout` ([`Deadline`]).
pub async fn from_settings(settings: &DatabaseSettings) -> Result<Arc<dyn BidLedger>, LedgerError> {
    let ledger: Arc<dyn BidLedger> = match settings.kind {
        LedgerKind::Postgres => Arc::new(PgBidLedger::connect_and_migrate(settings).await?),
        LedgerKind::Sqlite => {
            let ledger =
                SqliteBidLedger::connect_with(settings.url.expose(), settings.max_connections)
                    .await?;
            ledger.migrate().await?;
            Arc::new(ledger)
        }
    };
    Ok(Arc::new(Deadline::new(ledger, settings.call_timeout)))
}
