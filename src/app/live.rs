//! `bidorch config check --live`: each dependency the configuration names, asked whether it
//! answers — the broker, Redis, PostgreSQL — and each
//! marketplace's credentials, checked against its API without bidding (Freelancer: `/self`).
//! Nothing is declared, migrated or written; every check is bounded in time, and what it says
//! names the dependency by its redacted URL, never a secret.

use std::future::Future;
use std::time::Duration;

use crate::config::{LedgerKind, LockKind, MarketplaceKind, Settings, SourceKind};
use crate::lock::LockStore;
use crate::marketplace::{HttpMarketplace, Marketplace};

/// How long one dependency may take to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveResult {
    /// What was checked (`amqp`, `redis`, `postgres`, `marketplace upwork`).
    pub what: String,
    pub ok: bool,
    /// What it answered, for the operator.
    pub detail: String,
}

fn result(what: impl Into<String>, outcome: Result<String, String>) -> LiveResult {
    let (ok, detail) = match outcome {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    LiveResult {
        what: what.into(),
        ok,
        detail,
    }
}

/// `check` within [`CHECK_TIMEOUT`].
async fn bounded(check: impl Future<Output = Result<String, String>>) -> Result<String, String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}

/// Runs every check `settings` call for, in order: queue, lock store, ledger, marketplaces.
/// `token_of` reads a token variable (production: the environment).
pub async fn live_checks(
    settings: &Settings,
    token_of: impl Fn(&str) -> Option<String>,
) -> Vec<LiveResult> {
    let mut results = Vec::new();
    if settings.source.kind == SourceKind::Amqp {
        let amqp = &settings.amqp;
        let what = format!("amqp {}", amqp.url.redacted());
        results.push(result(what, bounded(broker(settings)).await));
    }
    if settings.lock.kind == LockKind::Redis {
        let what = format!("redis {}", settings.redis.url.redacted());
        results.push(result(what, bounded(redis(settings)).await));
    }
    if settings.database.kind == LedgerKind::Postgres {
        let what = format!("postgres {}", settings.database.url.redacted());
        results.push(result(what, bounded(postgres(settings)).await));
    }
    if settings.marketplace.kind == MarketplaceKind::Http {
        results.extend(marketplaces(settings, token_of).await);
    }
    results
}

async fn broker(settings: &Settings) -> Result<String, String> {
    let connection =
        crate::amqp::connection::open_connection(&settings.amqp, "bidorch-config-check")
            .await
            .map_err(|e| format!("cannot connect: {}", crate::error::Chain(&e)))?;
    let opened = connection.create_channel().await;
    let _ = connection.close(200, "config check done".into()).await;
    // Whether the work queue exists is not asked: a passive declare of a missing queue makes the
    // broker close the channel, which lapin logs as an error.
    opened
        .map(|_| "answers (connected, a channel opened)".to_owned())
        .map_err(|e| format!("cannot open a channel: {e}"))
}

async fn redis(settings: &Settings) -> Result<String, String> {
    let ports = super::locks(settings.lock.kind, &settings.redis, "config-check")
        .map_err(|e| format!("cannot connect: {}", crate::error::Chain(&e)))?;
    ports
        .locks
        .health()
        .await
        .map(|()| "answers PING".to_owned())
        .map_err(|e| format!("does not answer: {}", crate::error::Chain(&e)))
}

async fn postgres(settings: &Settings) -> Result<String, String> {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(settings.database.url.expose())
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    // The simple protocol: safe through a transaction-mode pooler.
    let row = sqlx::raw_sql("SHOW server_version")
        .fetch_one(&mut connection)
        .await
        .map_err(|e| format!("does not answer: {e}"))?;
    let version: String = sqlx::Row::try_get(&row, 0).unwrap_or_default();
    let _ = connection.close().await;
    Ok(format!("answers (PostgreSQL {version})"))
}

/// Each marketplace's credentials, through the client a worker would build.
async fn marketplaces(
    settings: &Settings,
    token_of: impl Fn(&str) -> Option<String>,
) -> Vec<LiveResult> {
    let mut results = Vec::new();
    for (name, marketplace) in &settings.marketplaces {
        let what = format!("marketplace {name} ({} API)", marketplace.api.as_str());
        let one = std::collections::BTreeMap::from([(name.clone(), marketplace.clone())]);
        let client = match HttpMarketplace::new(&one, settings.lock.ttl, &token_of) {
            Ok(client) => client,
            Err(e) => {
                results.push(result(what, Err(e.to_string())));
                continue;
            }
        };
        let checked = bounded(async {
            match client.check(name).await {
                Ok(check) if check.ok => Ok(check.detail),
                Ok(check) => Err(check.detail),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        results.push(result(what, checked));
    }
    results
}
