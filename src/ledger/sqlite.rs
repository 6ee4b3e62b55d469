//! SQLite ledger (embedded mode): the same table, statements and fencing as PostgreSQL.
//!
//! SQLite admits one writer at a time and each write here is a single statement that takes the
//! write lock before it reads, so a claim's upsert and the epoch-conditional updates are atomic;
//! other connections wait on the busy timeout instead of failing. Timestamps are fixed-width UTC
//! text (`2026-11-26T10:00:00.123Z`), which orders correctly as text.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::sql::{self, ACQUIRE_TIMEOUT, ConnectError, EntryRow};
use super::{BidLedger, Claim, Fenced, FinalOutcome, LedgerEntry, LedgerError, LedgerState};
use crate::config::SecretUrl;
use crate::posting::PostingKey;

/// Connections for a file database when the caller does not say.
const DEFAULT_MAX_CONNECTIONS: u32 = 4;

/// The ledger in SQLite. Cloning is shallow: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct SqliteBidLedger {
    pool: SqlitePool,
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
        Ok(Self { pool })
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

    async fn fetch_entry(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        let row: Option<EntryRow> = sqlx::query_as(
            "SELECT state, epoch, bid_id, detail FROM bid_ledger \
             WHERE marketplace = ?1 AND posting_id = ?2",
        )
        .bind(key.marketplace())
        .bind(key.posting_id())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| sql::query_error(Some(key), e))?;
        row.map(|row| sql::entry(key, row)).transpose()
    }
}

/// `since` in the stored timestamp format, so text comparison is time comparison.
fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[async_trait]
impl BidLedger for SqliteBidLedger {
    async fn lookup(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        self.fetch_entry(key).await
    }

    async fn claim(&self, key: &PostingKey, event_id: &str) -> Result<Claim, LedgerError> {
        let epoch: Option<i64> = sqlx::query_scalar(
            "INSERT INTO bid_ledger (marketplace, posting_id, state, epoch, event_id) \
             VALUES (?1, ?2, 'pending', 1, ?3) \
             ON CONFLICT (marketplace, posting_id) DO UPDATE \
                SET epoch = bid_ledger.epoch + 1, event_id = excluded.event_id, \
                    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                WHERE bid_ledger.state = 'pending' \
             RETURNING epoch",
        )
        .bind(key.marketplace())
        .bind(key.posting_id())
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| sql::query_error(Some(key), e))?;
        if let Some(epoch) = epoch {
            return Ok(Claim::Claimed { epoch });
        }
        // Final rows never change again, so this read sees the outcome that stopped the claim.
        match self.fetch_entry(key).await? {
            Some(entry) if entry.state.is_final() => Ok(Claim::Final(entry)),
            other => Err(LedgerError::Corrupt {
                key: key.to_string(),
                problem: format!("claim matched no row, yet the row is {other:?}"),
            }),
        }
    }

    async fn mark_sending(&self, key: &PostingKey, epoch: i64) -> Result<Fenced, LedgerError> {
        let done = sqlx::query(
            "UPDATE bid_ledger \
             SET sends = sends + 1, \
                 sent_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE marketplace = ?1 AND posting_id = ?2 AND epoch = ?3 AND state = 'pending'",
        )
        .bind(key.marketplace())
        .bind(key.posting_id())
        .bind(epoch)
        .execute(&self.pool)
        .await
        .map_err(|e| sql::query_error(Some(key), e))?;
        if done.rows_affected() == 1 {
            return Ok(Fenced::Written);
        }
        sql::fenced_after_miss(key, epoch, self.fetch_entry(key).await?)
    }

    async fn record(
        &self,
        key: &PostingKey,
        epoch: i64,
        outcome: &FinalOutcome,
    ) -> Result<Fenced, LedgerError> {
        let done = sqlx::query(
            "UPDATE bid_ledger \
             SET state = ?4, bid_id = ?5, detail = ?6, \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE marketplace = ?1 AND posting_id = ?2 AND epoch = ?3 AND state = 'pending'",
        )
        .bind(key.marketplace())
        .bind(key.posting_id())
        .bind(epoch)
        .bind(outcome.state().as_str())
        .bind(outcome.bid_id())
        .bind(outcome.detail())
        .execute(&self.pool)
        .await
        .map_err(|e| sql::query_error(Some(key), e))?;
        if done.rows_affected() == 1 {
            return Ok(Fenced::Written);
        }
        sql::fenced_after_miss(key, epoch, self.fetch_entry(key).await?)
    }

    async fn placed_since(&self, since: DateTime<Utc>) -> Result<u64, LedgerError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM bid_ledger WHERE state = 'placed' AND updated_at >= ?1",
        )
        .bind(timestamp(since))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| sql::query_error(None, e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn counts_by_state(&self) -> Result<Vec<(LedgerState, u64)>, LedgerError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM bid_ledger GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| sql::query_error(None, e))?;
        sql::counts(rows)
    }

    async fn health(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| sql::query_error(None, e))
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
