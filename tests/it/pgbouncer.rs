//! The ledger through a transaction-mode pooler, as a fleet runs it: `bidorch worker` processes
//! (the default configuration, `database.schema` set) whose `DATABASE_URL` is a real PgBouncer in
//! transaction pooling mode with fewer server connections than the workers open — so every
//! worker's transactions share server connections — and whose migrations take the direct
//! connection (`database.migration_url`). Duplicates and a SIGKILL mid-run: one bid each,
//! nothing parked, the ledger agreeing.

use std::time::Duration;

use bidorch::marketplace::sandbox::SandboxOptions;

use crate::support;
use support::pgbouncer::PgBouncer;
use support::queue::eventually;
use support::scenario::{Scenario, load};

const WORKERS: usize = 3;
/// Server connections PgBouncer keeps: fewer than the workers' 3 × 4 client connections.
const SERVER_CONNECTIONS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_through_pgbouncer_in_transaction_mode_bid_once_each() {
    if !support::postgres_available().await {
        return; // skipped, said by the check
    }
    let direct = support::database_url();
    let Some(bouncer) = PgBouncer::start(&direct, SERVER_CONNECTIONS).await else {
        return; // skipped, said by the check
    };
    let Some(mut scenario) = Scenario::start(
        "pgbouncer",
        SandboxOptions {
            lose_rate: 0.05,
            seed: 3,
            ..SandboxOptions::default()
        },
        &[
            ("DATABASE_URL", bouncer.url_for(&direct)),
            ("BIDORCH__DATABASE__MIGRATION_URL", direct.clone()),
        ],
    )
    .await
    else {
        return; // skipped, said by the check
    };
    for i in 0..WORKERS {
        scenario.spawn_worker(&format!("w{i}"));
    }
    scenario.wait_ready().await;
    let load = load("pgbouncer", 300, 2);
    let eligible = load.eligible.len() as u64;
    scenario.publish(&load.events).await;
    let sandbox = scenario.sandbox.clone();
    eventually(Duration::from_secs(120), "a third of the bids", || async {
        sandbox.stats().bids_created * 3 >= eligible
    })
    .await;
    scenario.workers[0].kill();
    scenario.spawn_worker("w0-again");
    scenario.wait_settled(&load, Duration::from_secs(240)).await;
    scenario.assert_promise(&load).await;
    let stats = scenario.sandbox.stats();
    let log = bouncer.log();
    assert!(
        !log.contains("prepared statement") && !log.contains("unsupported startup parameter"),
        "PgBouncer saw no session state: {log}"
    );
    scenario.workers.remove(0);
    scenario.stop().await;
    eprintln!(
        "pgbouncer: {WORKERS} workers (defaults, database.schema set) through PgBouncer 1.18 in \
         transaction mode with {SERVER_CONNECTIONS} server connections, 300 postings x 2, one \
         SIGKILLed, {} answers lost: {} bids for {eligible} eligible, 0 duplicates, 0 parked",
        stats.lost_responses, stats.bids_created
    );
}
