//! [`LedgerReports`] in PostgreSQL: what operators and `reconcile` read (unresolved sends,
//! attempts, counts, search, budget spend) and the lifecycle's prune and size, each one statement
//! in a transaction of its own, as through a transaction-mode pooler.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{PgBidLedger, commit};
use crate::ledger::sql::{self, ROW_COLUMNS};
use crate::ledger::{
    AttemptRecord, LedgerEntry, LedgerError, LedgerReports, LedgerSize, LedgerState, Pruned, Search,
};
use crate::posting::PostingKey;

#[async_trait]
impl LedgerReports for PgBidLedger {
    async fn unresolved(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        let sql = format!(
            "SELECT marketplace, posting_id, {ROW_COLUMNS} FROM bid_ledger \
             WHERE unknown_since < $1 AND state = 'pending' \
               AND (not_before IS NULL OR not_before <= now()) \
             ORDER BY unknown_since LIMIT $2"
        );
        let mut tx = self.tx().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before)
            .bind(i64::from(limit))
            .persistent(false)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        commit(tx).await?;
        rows.iter().map(sql::keyed_entry).collect()
    }

    async fn count_unresolved(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        let mut tx = self.tx().await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM bid_ledger WHERE unknown_since < $1 AND state = 'pending' \
             AND (not_before IS NULL OR not_before <= now())",
        )
        .bind(before)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| sql::query_error(None, e))?;
        commit(tx).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn attempts(&self, key: &PostingKey) -> Result<Vec<AttemptRecord>, LedgerError> {
        let mut tx = self.tx().await?;
        let attempts = sqlx::query_as::<_, sql::AttemptRow>(
            "SELECT epoch, instance, event_id, trace_id, claim, started_at, finished_at, result, \
                    http_status, detail, send \
             FROM bid_attempts WHERE marketplace = $1 AND posting_id = $2 ORDER BY epoch",
        )
        .bind(key.marketplace())
        .bind(key.posting_id())
        .persistent(false)
        .fetch_all(&mut *tx)
        .await
        .map(|rows| rows.into_iter().map(sql::AttemptRow::record).collect())
        .map_err(|e| sql::query_error(Some(key), e))?;
        commit(tx).await?;
        Ok(attempts)
    }

    async fn counts_by_state(&self) -> Result<Vec<(LedgerState, u64)>, LedgerError> {
        let mut tx = self.tx().await?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM bid_ledger GROUP BY state")
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| sql::query_error(None, e))?;
        commit(tx).await?;
        sql::counts(rows)
    }
    async fn placed_since(&self, since: DateTime<Utc>) -> Result<Vec<(String, u64)>, LedgerError> {
        let mut tx = self.tx().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT marketplace, count(*) FROM bid_ledger \
             WHERE state = 'placed' AND updated_at >= $1 GROUP BY marketplace ORDER BY 1",
        )
        .bind(since)
        .persistent(false)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| sql::query_error(None, e))?;
        commit(tx).await?;
        Ok(rows
            .into_iter()
            .map(|(m, n)| (m, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn search(&self, search: &Search) -> Result<Vec<LedgerEntry>, LedgerError> {
        let sql = format!(
            "SELECT marketplace, posting_id, {ROW_COLUMNS} FROM bid_ledger \
             WHERE ($1::text IS NULL OR marketplace = $1) \
               AND ($2::text IS NULL OR posting_id LIKE $2 ESCAPE '\\') \
               AND ($3::text IS NULL OR state = $3) \
               AND ($4::text IS NULL OR detail ILIKE $4 ESCAPE '\\') \
               AND ($5::timestamptz IS NULL OR updated_at >= $5) \
               AND ($6::timestamptz IS NULL OR updated_at < $6) \
             ORDER BY updated_at DESC, marketplace, posting_id LIMIT $7 OFFSET $8"
        );
        let mut tx = self.tx().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&search.marketplace)
            .bind(
                search
                    .id_prefix
                    .as_deref()
                    .map(|p| format!("{}%", Search::like_escaped(p))),
            )
            .bind(search.state.map(LedgerState::as_str))
            .bind(
                search
                    .reason
                    .as_deref()
                    .map(|r| format!("%{}%", Search::like_escaped(r))),
            )
            .bind(search.since)
            .bind(search.until)
            .bind(i64::from(search.limit))
            .bind(i64::from(search.offset))
            .persistent(false)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        commit(tx).await?;
        rows.iter().map(sql::keyed_entry).collect()
    }
    async fn budget_spent(
        &self,
        marketplace: &str,
        period_start: chrono::NaiveDate,
    ) -> Result<rust_decimal::Decimal, LedgerError> {
        let mut tx = self.tx().await?;
        let spent: Option<String> = sqlx::query_scalar(
            "SELECT spent::text FROM bid_budget_spend WHERE marketplace = $1 AND period_start = $2",
        )
        .bind(marketplace)
        .bind(period_start)
        .persistent(false)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| sql::query_error(None, e))?;
        commit(tx).await?;
        sql::decimal_or_zero(spent)
    }

    async fn prune(
        &self,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<Option<Pruned>, LedgerError> {
        self.prune_batch(before, batch).await
    }

    async fn prunable(&self, before: DateTime<Utc>) -> Result<Pruned, LedgerError> {
        self.count_prunable(before).await
    }

    async fn size(&self) -> Result<LedgerSize, LedgerError> {
        self.measure().await
    }
}
