//! PostgreSQL ledger (production): the claim and the finish are PL/pgSQL functions
//! (`bidorch_claim`, `bidorch_finish`, in `migrations/postgres/`) that take a whole batch as
//! arrays ([`steps`]); a batch of finishes and claims together is one statement in one
//! transaction.
//!
//! **Through a transaction-mode pooler** (PgBouncer, RDS Proxy, Supavisor) as well as direct:
//! nothing is kept in a session. The hot call, a batch's claims and finishes, is one message of
//! the simple query protocol with its values written in ([`literal`]): its timeouts and schema
//! (`SET LOCAL`) and the statement, run by the server as one implicit transaction, in one round
//! trip. Every other call runs in an explicit transaction that starts by setting the same (in
//! the same round trip as `BEGIN`), so the statement's Parse and Bind reach the server connection
//! the pooler gave the transaction. No named prepared statement outlives a transaction
//! (statement cache off), no startup `options`, no `extra_float_digits`; migrations, which hold
//! a session advisory lock, run over `database.migration_url`.
//!
//! Concurrency rests on PostgreSQL's row locks, taken in one global order (the day's cap rows by
//! marketplace, then the postings by key), so concurrent claims get distinct epochs, a
//! superseded epoch writes nothing, and batches never deadlock. A deadlock or serialization
//! failure reported anyway is retried here, not surfaced as an outage.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::sql::{self, ACQUIRE_TIMEOUT, ConnectError};
use super::{Claim, ClaimRequest, Fenced, Finish, LedgerBackend, LedgerEntry, LedgerError};
use crate::config::DatabaseSettings;
use crate::posting::PostingKey;

mod controls;
mod lifecycle;
mod literal;
mod reports;
mod rows;
mod steps;

use self::rows::{Step, in_order};

/// The ledger in PostgreSQL. Cloning is shallow: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct PgBidLedger {
    pool: PgPool,
    /// `BEGIN` and the transaction's settings, one simple-protocol round trip.
    begin: std::sync::Arc<str>,
    /// The transaction's settings alone, leading a statement sent whole (see `steps`).
    settings: std::sync::Arc<str>,
    /// Where migrations run, and in which schema.
    migrations: (crate::config::SecretUrl, Option<String>),
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
        let options = connect_options(settings.url.expose()).map_err(connect_error)?;
        let schema = (!settings.schema.is_empty()).then(|| quote_ident(&settings.schema));
        // The server bounds its side of every statement too: a stuck lock or a runaway query
        // ends as an error (retried later), never as a worker waiting forever.
        let ms = |d: std::time::Duration| format!("'{}ms'", d.as_millis().max(1));
        let mut local = format!(
            "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
            ms(settings.statement_timeout),
            ms(settings.statement_timeout / 2),
        );
        if let Some(schema) = &schema {
            // Only the schema: nothing of ours may land in `public` by accident.
            local.push_str(&format!("; SET LOCAL search_path = {schema}"));
        }
        let begin = format!(
            "BEGIN; {local}; SET LOCAL idle_in_transaction_session_timeout = {}",
            ms(settings.statement_timeout)
        );
        // A message sent whole is never idle in its transaction; its answers come as text, and
        // the timestamps' text must be ISO whatever the database's default says.
        local.push_str("; SET LOCAL DateStyle = ISO");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        let ledger = Self {
            pool,
            begin: begin.into(),
            settings: local.into(),
            migrations: (settings.migrations_url().clone(), schema.clone()),
        };
        if let Some(schema) = &schema {
            // Look first: CREATE SCHEMA checks the CREATE privilege even when the schema exists,
            // and a production role may only own its pre-created schema.
            let mut tx = ledger.tx().await?;
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                    .bind(&settings.schema)
                    .persistent(false)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| sql::query_error(None, e))?;
            commit(tx).await?;
            if exists {
                return Ok(ledger);
            }
            let statement = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
            match sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&ledger.pool)
                .await
            {
                Ok(_) => {}
                // Two processes creating the schema at once: the loser's error means "exists".
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("23505" | "42P06")) => {}
                Err(e) => return Err(sql::query_error(None, e)),
            }
        }
        Ok(ledger)
    }

    /// A transaction with the ledger's settings in force: every call runs in one.
    pub(crate) async fn tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, LedgerError> {
        self.begin_tx().await.map_err(|e| sql::query_error(None, e))
    }

    async fn begin_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool
            .begin_with(sqlx::AssertSqlSafe(self.begin.to_string()))
            .await
    }

    /// [`connect`](Self::connect), then [`migrate`](Self::migrate): what worker start and
    /// `bidorch migrate` need.
    pub async fn connect_and_migrate(settings: &DatabaseSettings) -> Result<Self, LedgerError> {
        let ledger = Self::connect(settings).await?;
        ledger.migrate().await?;
        Ok(ledger)
    }

    /// Applies the embedded migrations not yet applied (idempotent; concurrent callers are
    /// serialised by sqlx's session advisory lock), over one direct connection to
    /// `database.migration_url` (`url` by default) in the ledger's schema. The migration history
    /// lives in the same schema.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        let (url, schema) = &self.migrations;
        let connect_error = |source: sqlx::Error| {
            if source.to_string().contains("unsupported startup parameter") {
                return LedgerError::Migration(Box::new(ThroughPooler {
                    url: url.redacted(),
                }));
            }
            LedgerError::Unavailable(Box::new(ConnectError {
                url: url.redacted(),
                source,
            }))
        };
        let mut options = connect_options(url.expose()).map_err(connect_error)?;
        if let Some(schema) = schema {
            options = options.options([("search_path", schema.as_str())]);
        }
        // A pool of one (not a bare connection, whose migrator future is not `Send`).
        let direct = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        let ran = super::migrations::postgres()
            .run(&direct)
            .await
            .map_err(sql::migrate_error);
        direct.close().await;
        ran
    }

    /// Opens up to `connections` pooled connections and runs the batch statements on each with
    /// a made-up batch that takes their paths (a cap, a credit budget, a posting twice, a finish
    /// of nothing), in a transaction rolled back (nothing is written). A connection's first call
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
            let mut tx = sqlx::Connection::begin_with(
                &mut **connection,
                sqlx::AssertSqlSafe(self.begin.to_string()),
            )
            .await
            .map_err(failed)?;
            let (finishes, claims) = steps::warm_up_batch();
            for (finishes, claims) in [
                (Some(&finishes[..]), Some(&claims[..])),
                (None, Some(&claims[..])),
                (Some(&finishes[..]), None),
            ] {
                // Its `SET LOCAL`s only repeat those in force.
                let statement = steps::steps_sql(&self.settings, finishes, claims);
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(failed)?;
            }
            steps::lookup_query(Vec::new(), Vec::new())
                .persistent(false)
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

/// Migrations pointed at a transaction-mode pooler.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot run migrations through {url}: it refuses session settings, as a transaction-mode \
     pooler does (migrations hold a session lock); set database.migration_url to a direct \
     connection to PostgreSQL"
)]
struct ThroughPooler {
    url: String,
}

/// A ledger batch this slow is logged (without its values).
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_secs(1);

/// How every connection of ours is opened: safe through a transaction-mode pooler (no statement
/// kept by name, no startup settings a pooler would refuse or drop), and without sqlx's
/// statement logs: a batch's statement holds its postings' values (bid bodies, event ids), and
/// sqlx would print it whole at WARN when slow.
fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    use sqlx::ConnectOptions as _;
    let mut options = PgConnectOptions::from_str(url)?
        .application_name("bidorch")
        .statement_cache_capacity(0)
        .extra_float_digits(None)
        .disable_statement_logging();
    if super::loopback::on_loopback(url) {
        // libpq's default `sslmode=prefer` encrypts even a loopback connection, which costs a
        // fifth of the throughput and protects nothing; an explicit `sslmode` still wins.
        options = options.ssl_mode(sqlx::postgres::PgSslMode::Disable);
    }
    Ok(options)
}

/// Commits `tx`.
async fn commit(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Result<(), LedgerError> {
    tx.commit().await.map_err(|e| sql::query_error(None, e))
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
        let mut tx = self.tx().await?;
        let found = steps::lookup_query(marketplaces, postings)
            .persistent(false)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| sql::query_error(None, e))?;
        commit(tx).await?;
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
        // Sent as one message without `BEGIN`: the server runs it as one implicit transaction,
        // committed when it succeeds and rolled back whole when any part fails.
        let statement = std::sync::Arc::new(steps::steps_sql(
            &self.settings,
            (!finishes.is_empty()).then_some(finishes),
            (!claims.is_empty()).then_some(claims),
        ));
        let started = std::time::Instant::now();
        let rows = self
            .retrying(|| {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())).fetch_all(&self.pool)
            })
            .await
            .map_err(|e| sql::query_error(first_key, e))?;
        let elapsed = started.elapsed();
        if elapsed >= SLOW_BATCH {
            // In place of sqlx's slow-statement line, which would print the postings' values.
            tracing::warn!(
                finishes = finishes.len(),
                claims = claims.len(),
                elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                "A ledger batch was slow"
            );
        }
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
            .map(|(step, claim)| step.claim(claim))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((fenced, claims))
    }

    async fn health(&self) -> Result<(), LedgerError> {
        // The simple protocol: one message, safe through a pooler without a transaction.
        sqlx::raw_sql("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| sql::query_error(None, e))
    }
}
