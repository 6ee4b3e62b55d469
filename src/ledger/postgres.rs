//! PostgreSQL ledger (production): the `bid_ledger` table, claims as one atomic upsert, and
//! every later write of an attempt conditional on its epoch.
//!
//! Concurrency rests on PostgreSQL's row locks: `INSERT .. ON CONFLICT DO UPDATE` and the
//! conditional `UPDATE`s each lock the row and re-check their `WHERE` against its latest version
//! (READ COMMITTED), so concurrent claims get distinct epochs and a superseded epoch matches nothing.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::sql::{self, ACQUIRE_TIMEOUT, ConnectError, EntryRow};
use super::{BidLedger, Claim, Fenced, FinalOutcome, LedgerEntry, LedgerError, LedgerState};
use crate::config::DatabaseSettings;
use crate::posting::PostingKey;

/// The ledger in PostgreSQL. Cloning is shallow: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct PgBidLedger {
    pool: PgPool,
}

impl PgBidLedger {
    /// Connects a pool of `settings.max_connections` to `settings.url`, failing after a bounded
    /// wait if the server is unreachable. A non-empty `settings.schema` is created if missing and
    /// is every pooled connection's `search_path`, so deployments and tests sharing a database
    /// stay apart. Does not migrate: call [`migrate`](Self::migrate) (or use
    /// [`connect_and_migrate`](Self::connect_and_migrate)).
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, LedgerError> {
        let connect_error = |source| {
            LedgerError::Unavailable(Box::new(ConnectError {
                url: settings.url.redacted(),
                source,
            }))
        };
        let mut options =
            PgConnectOptions::from_str(settings.url.expose()).map_err(connect_error)?;
        options = options.application_name("bidorch");
        let schema = (!settings.schema.is_empty()).then(|| quote_ident(&settings.schema));
        // The server bounds its side of every statement too: a stuck lock or a runaway query
        // ends as an error (retried later), never as a worker waiting forever.
        let ms = |d: std::time::Duration| format!("{}ms", d.as_millis().max(1));
        let statement_timeout = ms(settings.statement_timeout);
        let lock_timeout = ms(settings.statement_timeout / 2);
        let mut server_options = vec![
            ("statement_timeout", statement_timeout.as_str()),
            ("lock_timeout", lock_timeout.as_str()),
            (
                "idle_in_transaction_session_timeout",
                statement_timeout.as_str(),
            ),
        ];
        if let Some(schema) = &schema {
            // Only the schema: nothing of ours may land in `public` by accident.
            server_options.push(("search_path", schema.as_str()));
        }
        options = options.options(server_options);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        if let Some(schema) = &schema {
            // Look first: CREATE SCHEMA checks the CREATE privilege even when the schema exists,
            // and a production role may only own its pre-created schema.
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                    .bind(&settings.schema)
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| sql::query_error(None, e))?;
            if exists {
                return Ok(Self { pool });
            }
            let statement = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
            match sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
            {
                Ok(_) => {}
                // Two processes creating the schema at once: the loser's error means "exists".
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("23505" | "42P06")) => {}
                Err(e) => return Err(sql::query_error(None, e)),
            }
        }
        Ok(Self { pool })
    }

    /// [`connect`](Self::connect), then [`migrate`](Self::migrate): what worker start and
    /// `bidorch migrate` need.
    pub async fn connect_and_migrate(settings: &DatabaseSettings) -> Result<Self, LedgerError> {
        let ledger = Self::connect(settings).await?;
        ledger.migrate().await?;
        Ok(ledger)
    }

    /// Applies the embedded migrations not yet applied (idempotent; concurrent callers are
    /// serialised by sqlx's advisory lock). The migration history lives in the same schema.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        super::migrations::postgres()
            .run(&self.pool)
            .await
            .map_err(sql::migrate_error)
    }

    /// Closes the pool, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn fetch_entry(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        let row: Option<EntryRow> = sqlx::query_as(
            "SELECT state, epoch, bid_id, detail FROM bid_ledger \
             WHERE marketplace = $1 AND posting_id = $2",
        )
        .bind(key.marketplace())
        .bind(key.posting_id())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| sql::query_error(Some(key), e))?;
        row.map(|row| sql::entry(key, row)).transpose()
    }
}

/// `"name"` with embedded quotes doubled: a safe SQL identifier whatever the configuration says.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl BidLedger for PgBidLedger {
    async fn lookup(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        self.fetch_entry(key).await
    }

    async fn claim(&self, key: &PostingKey, event_id: &str) -> Result<Claim, LedgerError> {
        // One statement: insert epoch 1, or bump a pending row's epoch under its row lock.
        // A final row matches no update and returns nothing.
        let epoch: Option<i64> = sqlx::query_scalar(
            "INSERT INTO bid_ledger AS l (marketplace, posting_id, state, epoch, event_id) \
             VALUES ($1, $2, 'pending', 1, $3) \
             ON CONFLICT (marketplace, posting_id) DO UPDATE \
                SET epoch = l.epoch + 1, event_id = EXCLUDED.event_id, updated_at = now() \
                WHERE l.state = 'pending' \
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
             SET sends = sends + 1, sent_at = now(), updated_at = now() \
             WHERE marketplace = $1 AND posting_id = $2 AND epoch = $3 AND state = 'pending'",
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
             SET state = $4, bid_id = $5, detail = $6, updated_at = now() \
             WHERE marketplace = $1 AND posting_id = $2 AND epoch = $3 AND state = 'pending'",
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
            "SELECT count(*) FROM bid_ledger WHERE state = 'placed' AND updated_at >= $1",
        )
        .bind(since)
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
