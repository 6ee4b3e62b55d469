//! Retention on PostgreSQL: pruning in short batches under a transaction-level advisory lock
//! (one pruner at a time, no session state: safe through a transaction-mode pooler), and the
//! ledger's size from the planner's statistics once the table is large.

use chrono::{DateTime, Utc};

use super::{PgBidLedger, commit};
use crate::ledger::lifecycle::{COUNT_EXACTLY_BELOW, LedgerSize, Pruned};
use crate::ledger::{LedgerError, sql};

/// One pruner per schema: the advisory lock's key is derived from the schema's name, so two
/// deployments sharing a database in different schemas do not wait on each other.
const PRUNE_LOCK: &str =
    "SELECT pg_try_advisory_xact_lock(hashtext('bidorch.prune:' || current_schema()))";

/// The final rows of one batch, oldest outcome first, skipping any a claim holds; their attempts
/// and then they are deleted by the same statement.
const PRUNE_ROWS: &str = "\
    WITH doomed AS ( \
        SELECT marketplace, posting_id FROM bid_ledger \
        WHERE state <> 'pending' AND updated_at < $1 \
        ORDER BY updated_at LIMIT $2 \
        FOR UPDATE SKIP LOCKED \
    ), gone_attempts AS ( \
        DELETE FROM bid_attempts a USING doomed d \
        WHERE a.marketplace = d.marketplace AND a.posting_id = d.posting_id RETURNING 1 \
    ), gone AS ( \
        DELETE FROM bid_ledger l USING doomed d \
        WHERE l.marketplace = d.marketplace AND l.posting_id = d.posting_id RETURNING 1 \
    ) \
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM gone_attempts)";

/// The side tables past the window: audit entries (a batch), daily-cap days and budget periods
/// over (a month's period may start 31 days before its last day), workers not seen since.
const PRUNE_OTHER: &str = "\
    WITH audit AS ( \
        DELETE FROM bid_audit WHERE id IN \
            (SELECT id FROM bid_audit WHERE at < $1 ORDER BY at LIMIT $2) RETURNING 1 \
    ), days AS ( \
        DELETE FROM bid_daily_spend WHERE day < ($1::timestamptz AT TIME ZONE 'UTC')::date - 1 \
        RETURNING 1 \
    ), periods AS ( \
        DELETE FROM bid_budget_spend \
        WHERE period_start < ($1::timestamptz AT TIME ZONE 'UTC')::date - 31 RETURNING 1 \
    ), workers AS ( \
        DELETE FROM bid_workers WHERE seen_at < $1 RETURNING 1 \
    ) \
    SELECT (SELECT count(*) FROM audit) + (SELECT count(*) FROM days) \
         + (SELECT count(*) FROM periods) + (SELECT count(*) FROM workers)";

const COUNT_ROWS: &str = "\
    SELECT (SELECT count(*) FROM bid_ledger WHERE state <> 'pending' AND updated_at < $1), \
           (SELECT count(*) FROM bid_attempts a JOIN bid_ledger l \
                ON l.marketplace = a.marketplace AND l.posting_id = a.posting_id \
            WHERE l.state <> 'pending' AND l.updated_at < $1), \
           (SELECT count(*) FROM bid_audit WHERE at < $1) \
         + (SELECT count(*) FROM bid_daily_spend \
            WHERE day < ($1::timestamptz AT TIME ZONE 'UTC')::date - 1) \
         + (SELECT count(*) FROM bid_budget_spend \
            WHERE period_start < ($1::timestamptz AT TIME ZONE 'UTC')::date - 31) \
         + (SELECT count(*) FROM bid_workers WHERE seen_at < $1)";

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PgBidLedger {
    /// One batch (see [`crate::ledger::LedgerReports::prune`]).
    pub(super) async fn prune_batch(
        &self,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<Option<Pruned>, LedgerError> {
        let mut tx = self.tx().await?;
        let ours: bool = sqlx::query_scalar(PRUNE_LOCK)
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        if !ours {
            commit(tx).await?;
            return Ok(None);
        }
        let (postings, attempts): (i64, i64) = sqlx::query_as(PRUNE_ROWS)
            .bind(before)
            .bind(i64::from(batch))
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        let other: i64 = sqlx::query_scalar(PRUNE_OTHER)
            .bind(before)
            .bind(i64::from(batch))
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        commit(tx).await?;
        Ok(Some(Pruned {
            postings: count(postings),
            attempts: count(attempts),
            other: count(other),
        }))
    }

    /// What pruning at `before` would delete, counted.
    pub(super) async fn count_prunable(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Pruned, LedgerError> {
        let mut tx = self.tx().await?;
        let (postings, attempts, other): (i64, i64, i64) = sqlx::query_as(COUNT_ROWS)
            .bind(before)
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        commit(tx).await?;
        Ok(Pruned {
            postings: count(postings),
            attempts: count(attempts),
            other: count(other),
        })
    }

    /// The size: the planner's row estimate split by the `state` column's statistics when the
    /// table is large, else an exact count; the oldest final row from its index.
    pub(super) async fn measure(&self) -> Result<LedgerSize, LedgerError> {
        let mut tx = self.tx().await?;
        let stats: (f64, Option<Vec<String>>, Option<Vec<f32>>) = sqlx::query_as(
            "SELECT c.reltuples::float8, s.most_common_vals::text::text[], s.most_common_freqs \
             FROM pg_class c \
             LEFT JOIN pg_stats s ON s.schemaname = current_schema() \
                 AND s.tablename = 'bid_ledger' AND s.attname = 'state' \
             WHERE c.oid = 'bid_ledger'::regclass",
        )
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| sql::query_error(None, e))?;
        let (rows, values, freqs) = stats;
        let estimated = rows >= COUNT_EXACTLY_BELOW as f64 && values.is_some() && freqs.is_some();
        let by_state = if estimated {
            let pairs = values
                .unwrap_or_default()
                .into_iter()
                .zip(freqs.unwrap_or_default())
                .map(|(state, f)| (state, (rows * f64::from(f)).round() as i64))
                .collect();
            sql::counts(pairs)?
        } else {
            let pairs: Vec<(String, i64)> =
                sqlx::query_as("SELECT state, count(*) FROM bid_ledger GROUP BY state")
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| sql::query_error(None, e))?;
            sql::counts(pairs)?
        };
        let oldest_final: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT min(updated_at) FROM bid_ledger WHERE state <> 'pending'")
                .persistent(false)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| sql::query_error(None, e))?;
        commit(tx).await?;
        Ok(LedgerSize {
            by_state,
            estimated,
            oldest_final,
        })
    }
}
