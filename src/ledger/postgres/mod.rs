//! PostgreSQL ledger (production): the claim and the finish are PL/pgSQL functions
//! (`bidorch_claim`, `bidorch_finish`, in `migrations/postgres/0003_*.sql`) that take a whole
//! batch as arrays ([`steps`]); a batch of finishes and claims together is one statement, one
//! round trip and one transaction.
//!
//! Concurrency rests on PostgreSQL's row locks, taken in one global order (the day's cap rows by
//! marketplace, then the postings by key), so concurrent claims get distinct epochs, a
//! superseded epoch writes nothing, and batches never deadlock. A deadlock or serialization
//! failure reported anyway is retried here, not surfaced as an outage.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::sql::{self, ACQUIRE_TIMEOUT, ConnectError, ROW_COLUMNS};
use super::{
    AttemptRecord, Claim, ClaimRequest, Fenced, Finish, LedgerBackend, LedgerEntry, LedgerError,
    LedgerReports, LedgerState, Search,
};
use crate::config::DatabaseSettings;
use crate::posting::PostingKey;

mod controls;
mod rows;
mod steps;

use self::rows::{Step, in_order};

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
        if super::loopback::on_loopback(settings.url.expose()) {
            // libpq's default `sslmode=prefer` encrypts even a loopback connection, which costs a
            // fifth of the throughput and protects nothing; an explicit `sslmode` still wins.
            options = options.ssl_mode(sqlx::postgres::PgSslMode::Disable);
        }
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

    /// Opens up to `connections` pooled connections and runs the batch statements on each with
    /// no postings, in a transaction rolled back (nothing is written). A connection's first call
    /// of a PL/pgSQL function compiles it and plans its statements: without this, the first
    /// postings a freshly started worker takes wait 10–15 ms longer for that, in the open.
    pub async fn warm_up(&self, connections: u32) -> Result<(), LedgerError> {
        let n = connections.clamp(1, self.pool.options().get_max_connections());
        let failed = |e| sql::query_error(None, e);
        let mut held = Vec::with_capacity(n as usize);
        // Held together, so that each is a connection of its own.
        for _ in 0..n {
            held.push(self.pool.acquire().await.map_err(failed)?);
        }
        for connection in &mut held {
            let mut tx = sqlx::Connection::begin(&mut **connection)
                .await
                .map_err(failed)?;
            for (finishes, claims) in [(true, true), (false, true), (true, false)] {
                steps::steps_query(finishes.then_some(&[]), claims.then_some(&[]))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(failed)?;
            }
            steps::lookup_query(Vec::new(), Vec::new())
                .fetch_all(&mut *tx)
                .await
                .map_err(failed)?;
            tx.rollback().await.map_err(failed)?;
        }
        tracing::debug!(connections = n, "Ledger connections warmed up");
        Ok(())
    }

    /// The pooled connections open now.
    pub fn open_connections(&self) -> u32 {
        self.pool.size()
    }

    /// Closes the pool, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `call` again (a few times) when PostgreSQL picked it as a deadlock or
    /// serialization victim: a conflict of the moment, not an outage.
    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, sqlx::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let mut tries = 0;
        loop {
            match call().await {
                Err(sqlx::Error::Database(e))
                    if tries < 3 && matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    }
}

/// `"name"` with embedded quotes doubled: a safe SQL identifier whatever the configuration says.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl LedgerBackend for PgBidLedger {
    async fn lookup_many(
        &self,
        keys: &[PostingKey],
    ) -> Result<Vec<Option<LedgerEntry>>, LedgerError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let marketplaces: Vec<&str> = keys.iter().map(PostingKey::marketplace).collect();
        let postings: Vec<&str> = keys.iter().map(PostingKey::posting_id).collect();
        let found = steps::lookup_query(marketplaces, postings)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        let mut out: Vec<Option<LedgerEntry>> = vec![None; keys.len()];
        for row in found {
            let step = Step::read(row)?;
            let i = usize::try_from(step.idx).unwrap_or(usize::MAX);
            if let Some(key) = keys.get(i)
                && let Some(row) = step.entry_row(key)?
            {
                out[i] = Some(row.entry(key)?);
            }
        }
        Ok(out)
    }

    async fn steps_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
        claims: &[ClaimRequest],
    ) -> Result<(Vec<Fenced>, Vec<Claim>), LedgerError> {
        if finishes.is_empty() && claims.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let first_key = finishes
            .first()
            .map(|f| &f.0)
            .or_else(|| claims.first().map(|c| &c.key));
        let rows = self
            .retrying(|| {
                steps::steps_query(
                    (!finishes.is_empty()).then_some(finishes),
                    (!claims.is_empty()).then_some(claims),
                )
                .fetch_all(&self.pool)
            })
            .await
            .map_err(|e| sql::query_error(first_key, e))?;
        let answers = rows
            .into_iter()
            .map(Step::read)
            .collect::<Result<Vec<_>, _>>()?;
        let (finished, claimed): (Vec<Step>, Vec<Step>) =
            answers.into_iter().partition(|s| s.kind == "f");
        let fenced = in_order(finished, finishes.len())?
            .iter()
            .zip(finishes)
            .map(|(step, (key, epoch, _))| step.fenced(key, *epoch))
            .collect::<Result<Vec<_>, _>>()?;
        let claims = in_order(claimed, claims.len())?
            .iter()
            .zip(claims)
            .map(|(step, claim)| step.claim(&claim.key))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((fenced, claims))
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
impl LedgerReports for PgBidLedger {
    async fn unresolved(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        let sql = format!(
            "SELECT marketplace, posting_id, {ROW_COLUMNS} FROM bid_ledger \
             WHERE unknown_since < $1 AND state = 'pending' \
             ORDER BY unknown_since LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        rows.iter().map(sql::keyed_entry).collect()
    }

    async fn count_unresolved(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM bid_ledger WHERE unknown_since < $1 AND state = 'pending'",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| sql::query_error(None, e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn attempts(&self, key: &PostingKey) -> Result<Vec<AttemptRecord>, LedgerError> {
        sqlx::query_as::<_, sql::AttemptRow>(
            "SELECT epoch, instance, event_id, trace_id, claim, started_at, finished_at, result, \
                    http_status, detail, send \
             FROM bid_attempts WHERE marketplace = $1 AND posting_id = $2 ORDER BY epoch",
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
             WHERE state = 'placed' AND updated_at >= $1 GROUP BY marketplace ORDER BY 1",
        )
        .bind(since)
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
             WHERE ($1::text IS NULL OR marketplace = $1) \
               AND ($2::text IS NULL OR posting_id LIKE $2 ESCAPE '\\') \
               AND ($3::text IS NULL OR state = $3) \
               AND ($4::text IS NULL OR detail ILIKE $4 ESCAPE '\\') \
               AND ($5::timestamptz IS NULL OR updated_at >= $5) \
               AND ($6::timestamptz IS NULL OR updated_at < $6) \
             ORDER BY updated_at DESC, marketplace, posting_id LIMIT $7 OFFSET $8"
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
            .bind(search.since)
            .bind(search.until)
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
            "SELECT spent::text FROM bid_budget_spend WHERE marketplace = $1 AND period_start = $2",
        )
        .bind(marketplace)
        .bind(period_start)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| sql::query_error(None, e))?;
        sql::decimal_or_zero(spent)
    }
}
