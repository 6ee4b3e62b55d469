//! Spend safety across the fleet: 8 worker processes race over 500 eligible postings per
//! marketplace with `daily_bid_cap = 50`, one of them SIGKILLed mid-run (its reservations must
//! neither leak a slot nor spend one twice). Exactly 50 bids per marketplace; every other
//! eligible posting is recorded `skipped` with reason `daily_cap`, acked, nothing parked.

use std::collections::BTreeMap;
use std::time::Duration;

use bidorch::ledger::LedgerState;
use bidorch::marketplace::sandbox::SandboxOptions;

use crate::support;
use support::queue::{Inspector, eventually};
use support::scenario::{Scenario, load};

const CAP: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_racing_workers_with_one_killed_bid_exactly_the_daily_cap() {
    let Some(mut scenario) = Scenario::start(
        "cap",
        SandboxOptions {
            latency: Duration::from_millis(20),
            ..SandboxOptions::default()
        },
        &[("BIDORCH__BIDDING__DAILY_BID_CAP", CAP.to_string())],
    )
    .await
    else {
        return; // skipped, said by the check
    };
    for i in 0..8 {
        scenario.spawn_worker(&format!("w{i}"));
    }
    scenario.wait_ready().await;
    // 1250 postings over two marketplaces, every fifth ineligible: 500 eligible on each.
    let load = load("cap", 1250, 2);
    assert_eq!(load.eligible.len(), 1000);
    scenario.publish(&load.events).await;
    eventually(Duration::from_secs(120), "the first bids", || async {
        scenario.sandbox.stats().bids_created >= 10
    })
    .await;
    scenario.workers[0].kill();

    let inspector = Inspector::connect().await;
    let postings = (load.eligible.len() + load.ineligible.len()) as u64;
    eventually(
        Duration::from_secs(240),
        "every posting final and nothing waiting",
        || async {
            support::final_rows(&*scenario.ledger.reports).await == postings
                && scenario.waiting(&inspector).await == 0
        },
    )
    .await;

    let stats = scenario.sandbox.stats();
    assert!(stats.duplicates.is_empty(), "{:?}", stats.duplicates);
    let mut per_marketplace: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, posting) in &stats.postings {
        let marketplace = key.split(':').next().unwrap_or("?");
        *per_marketplace.entry(marketplace).or_default() += posting.bids;
    }
    assert_eq!(
        per_marketplace,
        BTreeMap::from([("freelancer", CAP), ("upwork", CAP)]),
        "exactly the cap on each marketplace"
    );
    assert!(
        load.ineligible
            .iter()
            .all(|k| stats.postings.get(k).map_or(0, |p| p.bids) == 0),
        "an ineligible posting got a bid"
    );
    let counts: BTreeMap<LedgerState, u64> = scenario
        .ledger
        .reports
        .counts_by_state()
        .await
        .expect("counts")
        .into_iter()
        .collect();
    assert_eq!(counts[&LedgerState::Placed], 2 * CAP, "{counts:?}");
    assert_eq!(counts[&LedgerState::Pending], 0, "{counts:?}");
    assert_eq!(counts[&LedgerState::Rejected], 0, "{counts:?}");
    assert_eq!(
        counts[&LedgerState::Skipped],
        postings - 2 * CAP,
        "the rest skipped: {counts:?}"
    );
    // The capped ones say why.
    let capped = load
        .eligible
        .iter()
        .find(|k| stats.postings.get(*k).map_or(0, |p| p.bids) == 0)
        .expect("an eligible posting over the cap");
    let (marketplace, posting_id) = capped.split_once(':').expect("a key");
    let key = bidorch::posting::PostingKey::new(marketplace, posting_id).expect("a key");
    let row = scenario
        .ledger
        .ledger
        .lookup(&key)
        .await
        .expect("lookup")
        .expect("a row");
    assert_eq!(row.state, LedgerState::Skipped);
    assert!(
        row.detail.as_deref().unwrap_or("").contains("daily_cap"),
        "{row:?}"
    );
    let parked = inspector
        .drain(&scenario.settings.amqp.dead_letter_queue())
        .await;
    assert!(parked.is_empty(), "{} parked", parked.len());
    eprintln!(
        "spend: 8 workers (one SIGKILLed after its fleet's first 10 bids), 500 eligible per \
         marketplace, cap {CAP}: bids {:?}, {} skipped",
        per_marketplace,
        counts[&LedgerState::Skipped]
    );
    scenario.workers.remove(0);
    scenario.stop().await;
}
