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

/// Credits each marketplace's budget allows this week.
const CREDITS: i64 = 75;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_racing_workers_with_one_killed_spend_exactly_the_credit_budget() {
    let Some(mut scenario) = Scenario::start(
        "budget",
        SandboxOptions {
            latency: Duration::from_millis(20),
            ..SandboxOptions::default()
        },
        &[
            ("BIDORCH__BIDDING__BUDGET__CREDITS", CREDITS.to_string()),
            ("BIDORCH__BIDDING__BUDGET__PERIOD", "week".to_owned()),
            ("BIDORCH__BIDDING__BUDGET__COST", "event".to_owned()),
        ],
    )
    .await
    else {
        return; // skipped, said by the check
    };
    for i in 0..8 {
        scenario.spawn_worker(&format!("w{i}"));
    }
    scenario.wait_ready().await;
    // 1250 postings, 500 eligible on each marketplace; each bid costs what its event says: 1 or
    // 2.5 credits (the even and odd postings), exact decimals.
    let mut load = load("budget", 1250, 2);
    let mut cost_of: BTreeMap<String, rust_decimal::Decimal> = BTreeMap::new();
    for event in &mut load.events {
        let mut body: serde_json::Value = serde_json::from_slice(event.body()).expect("json");
        let id = body["posting_id"].as_str().unwrap_or_default().to_owned();
        let n: usize = id
            .rsplit('_')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let cost = if (n / 2).is_multiple_of(2) {
            "1"
        } else {
            "2.5"
        };
        body["bid_cost"] = serde_json::json!(cost);
        let key = format!("{}:{id}", body["marketplace"].as_str().unwrap_or_default());
        cost_of.insert(key, cost.parse().expect("a decimal"));
        *event = bidorch::publish::OutgoingEvent::parse(body.to_string()).expect("valid");
    }
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
    let mut spent: BTreeMap<&str, rust_decimal::Decimal> = BTreeMap::new();
    for (key, posting) in &stats.postings {
        if posting.bids > 0 {
            let marketplace = key.split(':').next().unwrap_or("?");
            *spent.entry(marketplace).or_default() += cost_of[key];
        }
    }
    let week = bidorch::config::BudgetPeriod::Week.start_of(chrono::Utc::now().date_naive());
    for marketplace in ["freelancer", "upwork"] {
        let recorded = scenario
            .ledger
            .reports
            .budget_spent(marketplace, week)
            .await
            .expect("budget spent");
        assert_eq!(
            spent[marketplace], recorded,
            "{marketplace}: the ledger's spend is the bids' costs"
        );
        assert!(
            recorded <= rust_decimal::Decimal::from(CREDITS),
            "{marketplace}: {recorded} spent of {CREDITS}"
        );
        // Cost-1 postings came after the budget ran short: the last credit was spent too.
        assert!(
            recorded > rust_decimal::Decimal::from(CREDITS - 1),
            "{marketplace}: only {recorded} of {CREDITS} spent"
        );
    }
    let counts: BTreeMap<LedgerState, u64> = scenario
        .ledger
        .reports
        .counts_by_state()
        .await
        .expect("counts")
        .into_iter()
        .collect();
    assert_eq!(counts[&LedgerState::Pending], 0, "{counts:?}");
    assert_eq!(counts[&LedgerState::Rejected], 0, "{counts:?}");
    let exhausted = scenario
        .ledger
        .reports
        .search(&bidorch::ledger::Search {
            reason: Some("budget_exhausted".to_owned()),
            limit: 1000,
            ..bidorch::ledger::Search::default()
        })
        .await
        .expect("search");
    assert!(
        exhausted.len() as u64 > 800,
        "the eligible postings the budget could not pay are skipped with budget_exhausted: {}",
        exhausted.len()
    );
    let parked = inspector
        .drain(&scenario.settings.amqp.dead_letter_queue())
        .await;
    assert!(parked.is_empty(), "{} parked", parked.len());
    eprintln!(
        "budget: 8 workers (one SIGKILLed after its fleet's first 10 bids), 500 eligible per \
         marketplace at 1 or 2.5 credits each, {CREDITS} credits a week: spent {spent:?}, \
         {} bids, {} skipped budget_exhausted",
        stats.bids_created,
        exhausted.len()
    );
    scenario.workers.remove(0);
    scenario.stop().await;
}
