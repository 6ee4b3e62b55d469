//! The ledger contract suite run against every backend — PostgreSQL (a fresh schema per test,
//! dropped afterwards), SQLite in a temporary file, SQLite in memory — plus connection,
//! isolation and migration checks.

use crate::support;

mod contract;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bidorch::config::{DatabaseSettings, LedgerKind, SecretUrl};
use bidorch::ledger::{
    self, Claim, Intent, LedgerBackend as _, LedgerReports as _, PgBidLedger, SqliteBidLedger,
};
use bidorch::posting::PostingKey;

fn pg_settings(url: &str, schema: &str) -> DatabaseSettings {
    DatabaseSettings {
        kind: LedgerKind::Postgres,
        url: SecretUrl::new(url),
        schema: schema.to_owned(),
        max_connections: 8,
        statement_timeout: std::time::Duration::from_secs(10),
        call_timeout: std::time::Duration::from_secs(15),
        migration_url: None,
    }
}

async fn drop_schema(schema: &str) {
    let pool = sqlx::PgPool::connect(&support::database_url())
        .await
        .expect("connect to drop the test schema");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop the test schema");
    pool.close().await;
}

/// Runs `body` on its own task and hands back its panic, so callers clean up before re-raising.
async fn run_then<Fut>(body: Fut) -> Result<(), Box<dyn std::any::Any + Send>>
where
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(body).await.map_err(|e| e.into_panic())
}

/// A migrated PostgreSQL ledger in a fresh schema; the schema is dropped even if `test` panics.
async fn with_postgres<F, Fut>(test: F)
where
    F: FnOnce(contract::Ledger) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let schema = support::unique("ledger");
    let ledger = PgBidLedger::connect_and_migrate(&pg_settings(&support::database_url(), &schema))
        .await
        .expect("connect and migrate");
    let outcome = run_then(test(contract::Ledger::new(
        Arc::new(ledger.clone()),
        Arc::new(ledger.clone()),
    )))
    .await;
    ledger.close().await;
    drop_schema(&schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn temp_db_path() -> PathBuf {
    std::env::temp_dir().join(format!("bidorch_{}.db", support::unique("ledger")))
}

fn remove_db_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// A migrated SQLite ledger in a temporary file (WAL, several connections); removed afterwards.
async fn with_sqlite_file<F, Fut>(test: F)
where
    F: FnOnce(contract::Ledger) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let path = temp_db_path();
    let ledger = SqliteBidLedger::connect_and_migrate(&format!("sqlite://{}", path.display()))
        .await
        .expect("open and migrate");
    let outcome = run_then(test(contract::Ledger::new(
        Arc::new(ledger.clone()),
        Arc::new(ledger.clone()),
    )))
    .await;
    ledger.close().await;
    remove_db_files(&path);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A migrated in-memory SQLite ledger (what the demo uses).
async fn with_sqlite_memory<F, Fut>(test: F)
where
    F: FnOnce(contract::Ledger) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ledger = SqliteBidLedger::connect_and_migrate("sqlite::memory:")
        .await
        .expect("open and migrate");
    test(contract::Ledger::new(
        Arc::new(ledger.clone()),
        Arc::new(ledger),
    ))
    .await;
}

/// One test per contract fn per backend: `postgres::x`, `sqlite_file::x`, `sqlite_memory::x`.
macro_rules! contract_suite {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if !crate::support::postgres_available().await {
                        return;
                    }
                    crate::ledger::with_postgres(crate::ledger::contract::$name).await;
                }
            )*
        }
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    crate::ledger::with_sqlite_file(crate::ledger::contract::$name).await;
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    crate::ledger::with_sqlite_memory(crate::ledger::contract::$name).await;
                }
            )*
        }
    };
}

contract_suite!(
    a_first_bid_claim_stores_the_request_and_counts_the_send,
    a_sent_request_is_sticky_whatever_later_claims_ask,
    the_first_attempts_trace_is_the_postings_for_good,
    a_skip_is_recorded_final_by_the_claim,
    a_final_outcome_is_never_overwritten,
    a_stale_epoch_cannot_finish,
    concurrent_claims_yield_distinct_epochs,
    the_daily_cap_is_exact_across_concurrent_claims,
    a_rejection_releases_its_cap_slot,
    resend_only_resends,
    attempts_tell_the_story,
    unresolved_sends_are_found_until_recorded,
    each_send_is_unknown_until_its_answer_says_otherwise,
    a_verifying_claim_of_an_unknown_send_is_a_lookup,
    pauses_are_durable_audited_and_counted,
    workers_report_themselves,
    search_finds_postings_by_prefix_state_and_reason,
    a_credit_budget_is_exact_and_a_rejection_gives_back_its_cost,
    a_batch_claims_and_finishes_in_order,
    a_batch_at_the_cap_spends_exactly_the_slots_left,
    finishes_and_claims_of_one_call_read_as_made_in_that_order,
    counts_by_state_counts_every_state,
    a_finish_without_a_claim_is_an_error,
    health_answers,
    retention_prunes_final_rows_and_their_attempts_never_pending_ones,
    a_send_waiting_out_a_retry_after_is_left_to_its_message,
    every_text_is_stored_exactly_as_it_was_given,
);

fn migration_versions(dir: &str) -> Vec<i64> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut versions: Vec<i64> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .map(|entry| entry.expect("directory entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_owned))
        .filter(|name| name.ends_with(".sql"))
        .map(|name| {
            let (version, _) = name
                .split_once('_')
                .unwrap_or_else(|| panic!("{dir}/{name}: expected VERSION_description.sql"));
            version
                .parse()
                .unwrap_or_else(|e| panic!("{dir}/{name}: version {version:?}: {e}"))
        })
        .collect();
    versions.sort_unstable();
    versions
}

#[test]
fn migration_versions_match_between_postgres_and_sqlite() {
    let postgres = migration_versions("migrations/postgres");
    let sqlite = migration_versions("migrations/sqlite");
    assert!(!postgres.is_empty(), "no PostgreSQL migrations found");
    assert_eq!(
        postgres, sqlite,
        "migrations/postgres and migrations/sqlite must carry the same versions"
    );
}

#[tokio::test]
async fn unreachable_postgres_is_a_retryable_error_without_the_password() {
    let settings = pg_settings("postgres://bidorch:hunter2@127.0.0.1:1/test", "");

    let err = PgBidLedger::connect(&settings)
        .await
        .expect_err("nothing listens on port 1");

    assert!(err.is_retryable(), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "password leaked: {shown}");
    assert!(shown.contains("127.0.0.1:1"), "names the database: {shown}");
}

#[tokio::test]
async fn unopenable_sqlite_is_an_error_not_a_panic() {
    let err = SqliteBidLedger::connect("sqlite:///nonexistent-bidorch-dir/sub/ledger.db")
        .await
        .expect_err("the directory does not exist");
    let shown = bidorch::error::chain(&err);
    assert!(shown.contains("ledger.db"), "{shown}");
}

#[tokio::test]
async fn postgres_schemas_isolate_ledgers_and_hold_their_tables() {
    if !support::postgres_available().await {
        return;
    }
    let (a, b) = (support::unique("ledger"), support::unique("ledger"));
    let url = support::database_url();
    let outcome = run_then({
        let (a, b, url) = (a.clone(), b.clone(), url.clone());
        async move {
            let in_a = bidorch::app::ledger(&pg_settings(&url, &a))
                .await
                .expect("open schema a")
                .ledger;
            let in_b = bidorch::app::ledger(&pg_settings(&url, &b))
                .await
                .expect("open schema b")
                .ledger;
            let key = PostingKey::new("upwork", "job_1").expect("valid key");

            let bid = contract::claim_of(&key, Intent::Bid(contract::request(&key, 1)));
            assert!(matches!(
                in_a.claim(bid.clone()).await.expect("claim"),
                Claim::Send { epoch: 1, .. }
            ));
            assert_eq!(in_b.lookup(&key).await.expect("lookup"), None);
            assert!(matches!(
                in_b.claim(bid.clone()).await.expect("claim"),
                Claim::Send { epoch: 1, .. }
            ));

            let pool = sqlx::PgPool::connect(&url).await.expect("connect");
            for schema in [&a, &b] {
                let tables: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM information_schema.tables \
                     WHERE table_schema = $1 AND table_name IN ('bid_ledger', '_sqlx_migrations')",
                )
                .bind(schema)
                .fetch_one(&pool)
                .await
                .expect("query catalog");
                assert_eq!(
                    tables, 2,
                    "schema {schema} holds the ledger and its history"
                );
            }
            pool.close().await;
        }
    })
    .await;
    drop_schema(&a).await;
    drop_schema(&b).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `test` with the settings of a fresh schema, dropped afterwards even if `test` panics.
async fn with_pg_settings<F, Fut>(test: F)
where
    F: FnOnce(DatabaseSettings) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if !support::postgres_available().await {
        return;
    }
    let schema = support::unique("ledger");
    let outcome = run_then(test(pg_settings(&support::database_url(), &schema))).await;
    drop_schema(&schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn postgres_migrate_is_idempotent() {
    with_pg_settings(|settings| async move {
        let ledger = PgBidLedger::connect(&settings).await.expect("connect");
        ledger.migrate().await.expect("first migration");
        ledger.migrate().await.expect("second migration is a no-op");
        let again = PgBidLedger::connect_and_migrate(&settings)
            .await
            .expect("another instance migrates the same schema");
        again.health().await.expect("healthy");
        ledger.close().await;
        again.close().await;
    })
    .await;
}

#[tokio::test]
async fn postgres_warm_up_opens_the_connections_and_writes_nothing() {
    with_pg_settings(|settings| async move {
        let ledger = PgBidLedger::connect_and_migrate(&settings)
            .await
            .expect("connect and migrate");
        ledger.warm_up(4).await.expect("warm up a fresh ledger");
        assert!(
            ledger.open_connections() >= 4,
            "{} connections open",
            ledger.open_connections()
        );
        let counts = ledger.counts_by_state().await.expect("counts");
        assert!(counts.iter().all(|(_, n)| *n == 0), "{counts:?}");
        // A ledger with rows: warmed again (another worker starting), its rows untouched.
        let key = PostingKey::new("upwork", "warm-1").expect("key");
        let view = contract::Ledger::new(Arc::new(ledger.clone()), Arc::new(ledger.clone()));
        let claim = view
            .claim(contract::claim_of(&key, Intent::Skip(vec!["test".into()])))
            .await
            .expect("claim");
        assert!(matches!(claim, Claim::Skipped { .. }), "{claim:?}");
        ledger.warm_up(8).await.expect("warm up again");
        let entry = view.lookup(&key).await.expect("lookup").expect("row");
        assert_eq!(entry.epoch, 1);
        assert_eq!(ledger.attempts(&key).await.expect("attempts").len(), 1);
        ledger.close().await;
    })
    .await;
}

#[tokio::test]
async fn sqlite_file_keeps_outcomes_across_reopen() {
    let path = temp_db_path();
    let url = format!("sqlite://{}", path.display());
    let key = PostingKey::new("upwork", "job_durable").expect("valid key");
    let outcome = run_then({
        let key = key.clone();
        let url = url.clone();
        async move {
            let opened = SqliteBidLedger::connect_and_migrate(&url)
                .await
                .expect("open");
            let first = contract::Ledger::new(Arc::new(opened.clone()), Arc::new(opened.clone()));
            let bid = contract::claim_of(&key, Intent::Bid(contract::request(&key, 1)));
            let Claim::Send { epoch, .. } = first.claim(bid.clone()).await.expect("claim") else {
                panic!("fresh posting must be claimable");
            };
            first
                .finish(
                    &key,
                    epoch,
                    ledger::Finish::Final(ledger::FinalOutcome::Placed {
                        bid_id: Some("bid-1".into()),
                        detail: None,
                        http_status: Some(201),
                    }),
                )
                .await
                .expect("finish");
            opened.close().await;

            let again = SqliteBidLedger::connect_and_migrate(&url)
                .await
                .expect("reopen and migrate again");
            let reopened = contract::Ledger::new(Arc::new(again.clone()), Arc::new(again.clone()));
            let entry = reopened
                .lookup(&key)
                .await
                .expect("lookup")
                .expect("row survived");
            assert_eq!(entry.state, ledger::LedgerState::Placed);
            assert_eq!(entry.bid_id.as_deref(), Some("bid-1"));
            again.close().await;
        }
    })
    .await;
    remove_db_files(&path);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn the_composition_root_opens_a_migrated_sqlite_memory_ledger() {
    let settings = DatabaseSettings {
        kind: LedgerKind::Sqlite,
        url: SecretUrl::new("sqlite::memory:"),
        schema: String::new(),
        max_connections: 8,
        statement_timeout: std::time::Duration::from_secs(10),
        call_timeout: std::time::Duration::from_secs(15),
        migration_url: None,
    };
    let ledger = bidorch::app::ledger(&settings).await.expect("open").ledger;
    let key = PostingKey::new("upwork", "job_1").expect("valid key");
    let bid = contract::claim_of(&key, Intent::Bid(contract::request(&key, 1)));
    assert!(matches!(
        ledger.claim(bid.clone()).await.expect("claim"),
        Claim::Send { epoch: 1, .. }
    ));
    ledger.health().await.expect("healthy");
}

/// On a large table the size comes from the planner's statistics (no `count(*)` per scrape),
/// close to the truth; a prune batch there deletes only its batch, oldest first, also with
/// two pruners started at once (the second waits its turn or finds the lock taken).
#[tokio::test]
async fn a_large_postgres_ledger_is_measured_from_statistics_and_pruned_a_batch_at_a_time() {
    use bidorch::ledger::LedgerState;
    with_pg_settings(|settings| async move {
        let ledger = PgBidLedger::connect_and_migrate(&settings)
            .await
            .expect("connect");
        let pool = sqlx::PgPool::connect(&support::database_url())
            .await
            .expect("connect");
        let table = format!("\"{}\".bid_ledger", settings.schema);
        // 300,000 rows: 60% placed, 30% skipped, 10% pending, outcomes a day apart per 3,000.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (marketplace, posting_id, state, event_id, updated_at) \
             SELECT 'upwork', 'job_' || i, \
                    CASE WHEN i % 10 < 6 THEN 'placed' WHEN i % 10 < 9 THEN 'skipped' \
                         ELSE 'pending' END, \
                    'evt', now() - make_interval(days => 200 - i / 3000) \
             FROM generate_series(1, 300000) AS i"
        )))
        .execute(&pool)
        .await
        .expect("fill");
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
            .execute(&pool)
            .await
            .expect("analyze");

        let size = ledger.size().await.expect("size");
        assert!(size.estimated, "a large table is estimated");
        let of = |state: LedgerState| {
            size.by_state
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n) as f64
        };
        for (state, truth) in [
            (LedgerState::Placed, 180_000.0),
            (LedgerState::Skipped, 90_000.0),
            (LedgerState::Pending, 30_000.0),
        ] {
            let n = of(state);
            assert!(
                (n - truth).abs() / truth < 0.1,
                "{state:?}: {n} for {truth}"
            );
        }
        let oldest = size.oldest_final.expect("oldest");
        assert!(chrono::Utc::now() - oldest > chrono::Duration::days(199));

        // Two pruners at once: whoever runs, a batch is a batch.
        let before = chrono::Utc::now() - chrono::Duration::days(90);
        let (a, b) = tokio::join!(ledger.prune(before, 5_000), ledger.prune(before, 5_000));
        let (a, b) = (a.expect("prune"), b.expect("prune"));
        let done: Vec<_> = [a, b].into_iter().flatten().collect();
        assert!(!done.is_empty(), "one of them pruned");
        for d in &done {
            assert_eq!(d.postings, 5_000, "exactly a batch: {d:?}");
        }
        let after = ledger.size().await.expect("size");
        let newest_gone = after.oldest_final.expect("oldest");
        assert!(newest_gone > oldest, "the oldest went first");
        let pending_left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE state = 'pending'"
        )))
        .fetch_one(&pool)
        .await
        .expect("count");
        assert_eq!(pending_left, 30_000, "pending rows are never pruned");
        pool.close().await;
        ledger.close().await;
    })
    .await;
}

/// A claim is one statement carrying its own timeouts: held up by a row lock past the lock
/// timeout (half the statement timeout), it fails as an error and writes nothing, and the
/// posting's next claim goes on from where the ledger stood.
#[tokio::test]
async fn a_postgres_claim_held_up_past_its_lock_timeout_fails_and_writes_nothing() {
    with_pg_settings(|mut settings| async move {
        settings.statement_timeout = std::time::Duration::from_secs(2);
        let ledger = PgBidLedger::connect_and_migrate(&settings)
            .await
            .expect("connect");
        let k = contract::key("upwork", "job_held");
        let bid = || contract::claim_of(&k, Intent::Bid(contract::request(&k, 450)));
        let claim = |ledger: PgBidLedger| async move {
            ledger
                .steps_many(&[], &[bid()])
                .await
                .map(|(_, mut claims)| claims.remove(0))
        };
        let first = claim(ledger.clone()).await.expect("first claim");
        assert!(matches!(first, Claim::Send { epoch: 1, .. }), "{first:?}");

        let mut holder =
            <sqlx::PgConnection as sqlx::Connection>::connect(&support::database_url())
                .await
                .expect("connect the lock holder");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "BEGIN; SELECT 1 FROM \"{}\".bid_ledger WHERE posting_id = 'job_held' FOR UPDATE",
            settings.schema
        )))
        .execute(&mut holder)
        .await
        .expect("hold the posting's row");
        let held = claim(ledger.clone()).await;
        assert!(held.is_err(), "a claim past the lock timeout: {held:?}");
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut holder)
            .await
            .expect("release the row");

        let next = claim(ledger.clone()).await.expect("the next claim");
        assert!(
            matches!(
                next,
                Claim::Send {
                    epoch: 2,
                    resend: true,
                    ..
                }
            ),
            "{next:?}"
        );
        let attempts = ledger.attempts(&k).await.expect("attempts");
        assert_eq!(
            attempts.len(),
            2,
            "the failed claim left no attempt: {attempts:?}"
        );
        ledger.close().await;
    })
    .await;
}
