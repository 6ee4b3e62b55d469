//! SQLite ledger (embedded mode): the same tables and the same claim and finish decisions as
//! PostgreSQL's functions, made in Rust inside one `BEGIN IMMEDIATE` transaction per batch.
//!
//! SQLite admits one writer at a time and an immediate transaction takes the write lock before
//! it reads, so each claim and finish sees exactly the row it changes; other connections wait
//! on the busy timeout instead of failing. Timestamps are fixed-width UTC text
//! (`2026-11-26T10:00:00.123Z`), which orders correctly as text.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::sql::{self, ACQUIRE_TIMEOUT, ConnectError, ROW_COLUMNS, Row};
use super::{
    AttemptRecord, Claim, ClaimRequest, Fenced, Finish, LedgerBackend, LedgerEntry, LedgerError,
    LedgerReports, LedgerSize, LedgerState, Pruned, Search,
};
use crate::config::SecretUrl;
use crate::posting::PostingKey;

mod controls;
mod lifecycle;
mod steps;

use self::steps::{Tx, claim_in, finish_in, timestamp};

/// This process's turn to write (see [`SqliteBidLedger::immediate`]).
type WriteTurn<'a> = tokio::sync::MutexGuard<'a, ()>;

/// Connections for a file database when the caller does not say.
const DEFAULT_MAX_CONNECTIONS: u32 = 4;

/// The ledger in SQLite. Cloning is shallow: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct SqliteBidLedger {
    pool: SqlitePool,
    /// One write transaction of this process at a time, waited for here rather than in
    /// SQLite's busy handler, which sleeps in steps of milliseconds: with a pool of writers
    /// contending, the demo spent two thirds of its wall time asleep there.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl SqliteBidLedger {
    /// Opens (creating if missing) the database at `url` — `sqlite://path/to/ledger.db` or
    /// `sqlite::memory:` — with a small pool. Does not migrate: call [`migrate`](Self::migrate)
    /// (or use [`connect_and_migrate`](Self::connect_and_migrate)).
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        Self::connect_with(url, DEFAULT_MAX_CONNECTIONS).await
    }

    /// [`connect`](Self::connect) with at most `max_connections` pooled connections.
    ///
    /// A file database uses WAL (readers never block the writer) and a busy timeout. An
    /// in-memory database lives only as long as a connection to it, so its pool holds exactly
    /// one connection that never idles out or expires: every caller shares that one database.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self, LedgerError> {
        let connect_error = |source| {
            LedgerError::Unavailable(Box::new(ConnectError {
                url: SecretUrl::new(url).redacted(),
                source,
            }))
        };
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut options = SqliteConnectOptions::from_str(url)
            .map_err(connect_error)?
            .busy_timeout(ACQUIRE_TIMEOUT)
            .foreign_keys(true);
        let mut pool = SqlitePoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        if in_memory {
            pool = pool
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        } else {
            options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL + NORMAL survives a process crash; only an OS crash may lose the last commits.
                .synchronous(SqliteSynchronous::Normal);
            pool = pool.max_connections(max_connections.max(1));
        }
        let pool = pool.connect_with(options).await.map_err(connect_error)?;
        Ok(Self {
            pool,
            writer: std::sync::Arc::default(),
        })
    }

    /// [`connect`](Self::connect), then [`migrate`](Self::migrate).
    pub async fn connect_and_migrate(url: &str) -> Result<Self, LedgerError> {
        let ledger = Self::connect(url).await?;
        ledger.migrate().await?;
        Ok(ledger)
    }

    /// Applies the embedded migrations not yet applied (idempotent).
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        super::migrations::sqlite()
            .run(&self.pool)
            .await
            .map_err(sql::migrate_error)
    }

    /// Closes the pool (for an in-memory database this discards it).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// SQLite's clock in the stored format (fixed-width UTC text, which orders as time).
impl SqliteBidLedger {
    /// An immediate transaction: the write lock is taken at once, so the reads inside it see
    /// what the writes act on (SQLite has one writer at a time; others wait on the busy timeout).
    /// The turn is this process's: hold it until the transaction ends.
    async fn immediate(&self) -> Result<(WriteTurn<'_>, Tx<'_>), LedgerError> {
        let turn = self.writer.lock().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| sql::query_error(None, e))?;
        Ok((turn, tx))
    }
}

#[async_trait]
impl LedgerBackend for SqliteBidLedger {
    async fn lookup_many(
        &self,
        keys: &[PostingKey],
    ) -> Result<Vec<Option<LedgerEntry>>, LedgerError> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM bid_ledger WHERE marketplace = ?1 AND posting_id = ?2"
        );
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(key.marketplace())
                .bind(key.posting_id())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| sql::query_error(Some(key), e))?;
            out.push(row.map(|r| r.entry(key)).transpose()?);
        }
        Ok(out)
    }

    async fn steps_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
        claims: &[ClaimRequest],
    ) -> Result<(Vec<Fenced>, Vec<Claim>), LedgerError> {
        let (_turn, mut tx) = self.immediate().await?;
        let mut fenced = Vec::with_capacity(finishes.len());
        for (key, epoch, finish) in finishes {
            fenced.push(finish_in(&mut tx, key, *epoch, finish).await?);
        }
        let mut claimed = Vec::with_capacity(claims.len());
        for c in claims {
            claimed.push(claim_in(&mut tx, c).await?);
        }
        tx.commit().await.map_err(|e| sql::query_error(None, e))?;
        Ok((fenced, claimed))
    }

    async fn health(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| sql::query_error(None, e))
    }
}

#[async_trait]
impl LedgerReports for SqliteBidLedger {
    async fn unresolved(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        let sql = format!(
            "SELECT marketplace, posting_id, {ROW_COLUMNS} FROM bid_ledger \
             WHERE unknown_since < ?1 AND state = 'pending' \
               AND (not_before IS NULL OR not_before <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
             ORDER BY unknown_since LIMIT ?2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(timestamp(before))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        rows.iter().map(sql::keyed_entry).collect()
    }

    async fn count_unresolved(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM bid_ledger WHERE unknown_since < ?1 AND state = 'pending' \
             AND (not_before IS NULL OR not_before <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        )
        .bind(timestamp(before))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| sql::query_error(None, e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn attempts(&self, key: &PostingKey) -> Result<Vec<AttemptRecord>, LedgerError> {
        sqlx::query_as::<_, sql::AttemptRow>(
            "SELECT epoch, instance, event_id, trace_id, claim, started_at, finished_at, result, \
                    http_status, detail, send \
             FROM bid_attempts WHERE marketplace = ?1 AND posting_id = ?2 ORDER BY epoch",
        )
        .bind(key.marketplace())
        .bind(key.posting_id())
        .fetch_all(&self.pool)
        .await
        .map(|rows| rows.into_iter().map(sql::AttemptRow::record).collect())
        .map_err(|e| sql::query_error(Some(key), e))
    }

    async fn counts_by_state(&self) -> Result<Vec<(LedgerState, u64)>, LedgerError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM bid_ledger GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| sql::query_error(None, e))?;
        sql::counts(rows)
    }
    async fn placed_since(&self, since: DateTime<Utc>) -> Result<Vec<(String, u64)>, LedgerError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT marketplace, count(*) FROM bid_ledger \
             WHERE state = 'placed' AND updated_at >= ?1 GROUP BY marketplace ORDER BY 1",
        )
        .bind(timestamp(since))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| sql::query_error(None, e))?;
        Ok(rows
            .into_iter()
            .map(|(m, n)| (m, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn search(&self, search: &Search) -> Result<Vec<LedgerEntry>, LedgerError> {
        let sql = format!(
            "SELECT marketplace, posting_id, {ROW_COLUMNS} FROM bid_ledger \
             WHERE (?1 IS NULL OR marketplace = ?1) \
               AND (?2 IS NULL OR posting_id LIKE ?2 ESCAPE '\\') \
               AND (?3 IS NULL OR state = ?3) \
               AND (?4 IS NULL OR detail LIKE ?4 ESCAPE '\\') \
               AND (?5 IS NULL OR updated_at >= ?5) \
               AND (?6 IS NULL OR updated_at < ?6) \
             ORDER BY updated_at DESC, marketplace, posting_id LIMIT ?7 OFFSET ?8"
        );
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
            .bind(search.since.map(timestamp))
            .bind(search.until.map(timestamp))
            .bind(i64::from(search.limit))
            .bind(i64::from(search.offset))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        rows.iter().map(sql::keyed_entry).collect()
    }
    async fn budget_spent(
        &self,
        marketplace: &str,
        period_start: chrono::NaiveDate,
    ) -> Result<rust_decimal::Decimal, LedgerError> {
        let spent: Option<String> = sqlx::query_scalar(
            "SELECT spent FROM bid_budget_spend WHERE marketplace = ?1 AND period_start = ?2",
        )
        .bind(marketplace)
        .bind(period_start.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| sql::query_error(None, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_the_stored_fixed_width_format() {
        let at = DateTime::parse_from_rfc3339("2026-11-26T10:00:00.5Z")
            .expect("valid RFC 3339")
            .with_timezone(&Utc);
        assert_eq!(timestamp(at), "2026-11-26T10:00:00.500Z");
    }
}
