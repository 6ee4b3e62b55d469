//! Each port's stack, chosen from configuration in one place: the backend `kind` names and the
//! decorators around it, outermost last.
//!
//! ```text
//! ledger   PgBidLedger | SqliteBidLedger  →  Deadline (database.call_timeout)  →  Batched
//!          (and the same Deadline'd backend as the reports)
//! locks    RedisLockStore  →  BatchingLocks (a single node; a cluster's keys are on many)  →  Metered
//!          MemoryLockStore →  Metered
//! rates    the same store as the locks  →  Metered (its errors counted with the lock store's)
//! ```

use std::sync::Arc;

use crate::config::{DatabaseSettings, LedgerKind, LockKind, RedisSettings};
use crate::ledger::{
    Batched, BidLedger, ControlStore, Deadline, LedgerBackend, LedgerError, LedgerReports,
    PgBidLedger, SqliteBidLedger,
};
use crate::lock::{
    BatchingLocks, LockError, LockStore, MemoryLockStore, MeteredLockStore, RateLimiter,
    RedisLockStore,
};

/// The ledger's ports over one database: the pipeline's and the reports. Cloning is shallow.
#[derive(Clone)]
pub struct LedgerPorts {
    /// A posting's attempt: lookup, claim, finish (batched across concurrent postings).
    pub ledger: Arc<dyn BidLedger>,
    /// Reconcile, inspect and the gauges.
    pub reports: Arc<dyn LedgerReports>,
    /// Operators' pauses, their audit history, the workers' reports.
    pub controls: Arc<dyn ControlStore>,
}

/// Opens the ledger `settings.kind` names, applies its migrations, and stacks it (see the module
/// docs) — what worker start, `bidorch migrate` and the demo need. PostgreSQL uses `url`,
/// `schema` and `max_connections`; SQLite uses `url` (`sqlite://file.db` or `sqlite::memory:`)
/// and `max_connections`.
pub async fn ledger(settings: &DatabaseSettings) -> Result<LedgerPorts, LedgerError> {
    let (backend, controls): (Arc<dyn LedgerBackend>, Arc<dyn ControlStore>) = match settings.kind {
        LedgerKind::Postgres => {
            let ledger = PgBidLedger::connect_and_migrate(settings).await?;
            // As many connections as a busy worker's lanes use at once (a batch of steps in
            // flight and the next, lookups likewise). A cold start is no reason to refuse one.
            let busy = u32::try_from(crate::ledger::batch::LANE.in_flight * 2).unwrap_or(u32::MAX);
            if let Err(e) = ledger.warm_up(busy).await {
                tracing::warn!(
                    error = %crate::error::Chain(&e),
                    "Ledger warm-up failed; the first postings may be slower"
                );
            }
            (Arc::new(ledger.clone()), Arc::new(ledger))
        }
        LedgerKind::Sqlite => {
            let ledger =
                SqliteBidLedger::connect_with(settings.url.expose(), settings.max_connections)
                    .await?;
            ledger.migrate().await?;
            (Arc::new(ledger.clone()), Arc::new(ledger))
        }
    };
    let bounded: Arc<dyn LedgerBackend> = Arc::new(Deadline::new(backend, settings.call_timeout));
    Ok(LedgerPorts {
        ledger: Arc::new(Batched::new(bounded.clone())),
        reports: bounded,
        controls,
    })
}

/// The lock store's ports: leases, and the marketplaces' fleet-wide request rates (kept in the
/// same store). Cloning is shallow.
#[derive(Clone)]
pub struct LockPorts {
    /// The leases, with the original system's counters.
    pub locks: Arc<MeteredLockStore>,
    pub rates: Arc<dyn RateLimiter>,
}

/// The lock store `kind` names, stacked (see the module docs), its holder tokens naming
/// `instance`. A Redis store is built without waiting for Redis: while Redis is down every call
/// errors (and postings wait), it never degrades to in-process locking. Whether the in-process
/// store is acceptable for a deployment is decided in [`super`]. Call inside a Tokio runtime.
pub fn locks(
    kind: LockKind,
    redis: &RedisSettings,
    instance: &str,
) -> Result<LockPorts, LockError> {
    let (locks, rates, backend): (Arc<dyn LockStore>, Arc<dyn RateLimiter>, &'static str) =
        match kind {
            LockKind::Redis => {
                let store = Arc::new(RedisLockStore::new(redis)?.with_instance(instance));
                let locks: Arc<dyn LockStore> = if store.is_cluster() {
                    store.clone()
                } else {
                    Arc::new(BatchingLocks::new(store.clone()))
                };
                (locks, store, "redis")
            }
            LockKind::Memory => {
                let store = Arc::new(MemoryLockStore::new().with_instance(instance));
                (store.clone(), store, "memory")
            }
        };
    let metered = Arc::new(MeteredLockStore::new(locks, backend));
    Ok(LockPorts {
        rates: Arc::new(metered.rate_limiter(rates)),
        locks: metered,
    })
}
