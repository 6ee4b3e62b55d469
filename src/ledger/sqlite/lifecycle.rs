//! Retention on SQLite (embedded mode): the same batches as PostgreSQL's in one immediate
//! transaction each — SQLite has one writer at a time, so no pruner lock is needed — and exact
//! counts for the size (an embedded ledger is one machine's).

use chrono::{DateTime, Utc};

use super::SqliteBidLedger;
use super::steps::timestamp;
use crate::ledger::lifecycle::{LedgerSize, Pruned};
use crate::ledger::{LedgerError, sql};

const DOOMED: &str = "SELECT marketplace, posting_id FROM bid_ledger \
     WHERE state <> 'pending' AND updated_at < ?1 ORDER BY updated_at LIMIT ?2";

/// The side tables past the window, as PostgreSQL's `PRUNE_OTHER` says.
/// Audit entries in a batch; the other side tables are small.
const PRUNE_AUDIT: &str = "DELETE FROM bid_audit WHERE id IN \
     (SELECT id FROM bid_audit WHERE at < ?1 ORDER BY at LIMIT ?2)";
const PRUNE_OTHER: [&str; 3] = [
    "DELETE FROM bid_daily_spend WHERE day < date(?1, '-1 day')",
    "DELETE FROM bid_budget_spend WHERE period_start < date(?1, '-31 days')",
    "DELETE FROM bid_workers WHERE seen_at < ?1",
];

const COUNT_OTHER: &str = "\
    SELECT (SELECT count(*) FROM bid_audit WHERE at < ?1) \
         + (SELECT count(*) FROM bid_daily_spend WHERE day < date(?1, '-1 day')) \
         + (SELECT count(*) FROM bid_budget_spend WHERE period_start < date(?1, '-31 days')) \
         + (SELECT count(*) FROM bid_workers WHERE seen_at < ?1)";

impl SqliteBidLedger {
    /// One batch (see [`crate::ledger::LedgerReports::prune`]).
    pub(super) async fn prune_batch(
        &self,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<Option<Pruned>, LedgerError> {
        let at = timestamp(before);
        let (_turn, mut tx) = self.immediate().await?;
        let err = |e| sql::query_error(None, e);
        let attempts = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM bid_attempts WHERE (marketplace, posting_id) IN ({DOOMED})"
        )))
        .bind(&at)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected();
        let postings = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM bid_ledger WHERE (marketplace, posting_id) IN ({DOOMED})"
        )))
        .bind(&at)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected();
        let mut other = sqlx::query(PRUNE_AUDIT)
            .bind(&at)
            .bind(i64::from(batch))
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
        for statement in PRUNE_OTHER {
            other += sqlx::query(statement)
                .bind(&at)
                .execute(&mut *tx)
                .await
                .map_err(err)?
                .rows_affected();
        }
        tx.commit().await.map_err(err)?;
        Ok(Some(Pruned {
            postings,
            attempts,
            other,
        }))
    }

    /// What pruning at `before` would delete, counted.
    pub(super) async fn count_prunable(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Pruned, LedgerError> {
        let at = timestamp(before);
        let err = |e| sql::query_error(None, e);
        let (postings, attempts): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM bid_ledger \
                     WHERE state <> 'pending' AND updated_at < ?1), \
                    (SELECT count(*) FROM bid_attempts a JOIN bid_ledger l \
                         ON l.marketplace = a.marketplace AND l.posting_id = a.posting_id \
                     WHERE l.state <> 'pending' AND l.updated_at < ?1)",
        )
        .bind(&at)
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        let other: i64 = sqlx::query_scalar(COUNT_OTHER)
            .bind(&at)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Pruned {
            postings: n(postings),
            attempts: n(attempts),
            other: n(other),
        })
    }

    /// Rows by state, counted, and the oldest final row from its index.
    pub(super) async fn measure(&self) -> Result<LedgerSize, LedgerError> {
        let err = |e| sql::query_error(None, e);
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM bid_ledger GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(err)?;
        let oldest: Option<String> =
            sqlx::query_scalar("SELECT min(updated_at) FROM bid_ledger WHERE state <> 'pending'")
                .fetch_one(&self.pool)
                .await
                .map_err(err)?;
        Ok(LedgerSize {
            by_state: sql::counts(rows)?,
            estimated: false,
            oldest_final: oldest
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
        })
    }
}
