//! The per-marketplace request rate is shared by the fleet: 3 worker processes, a limit of
//! R requests/s with burst B on each marketplace, measured at the sandbox by its own clock — no
//! one-second window holds more than R + B bids, and every eligible posting still gets its one
//! bid (over the rate, a posting waits; it is never parked for it).

use std::collections::BTreeMap;
use std::time::Duration;

use bidorch::marketplace::sandbox::SandboxOptions;

use crate::support;
use support::scenario::{Scenario, load};

// 100 ms between calls: scheduling jitter on a loaded CI machine stays well inside it.
const RATE: u32 = 10;
const BURST: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_each_marketplaces_rate_limit() {
    let mut overrides = vec![("BIDORCH__AMQP__RETRY_TIERS", "100ms,1s".to_owned())];
    for m in ["UPWORK", "FREELANCER"] {
        overrides.push((
            if m == "UPWORK" {
                "BIDORCH__MARKETPLACES__UPWORK__RATE_LIMIT"
            } else {
                "BIDORCH__MARKETPLACES__FREELANCER__RATE_LIMIT"
            },
            RATE.to_string(),
        ));
        overrides.push((
            if m == "UPWORK" {
                "BIDORCH__MARKETPLACES__UPWORK__RATE_BURST"
            } else {
                "BIDORCH__MARKETPLACES__FREELANCER__RATE_BURST"
            },
            BURST.to_string(),
        ));
    }
    let Some(mut scenario) = Scenario::start("rate", SandboxOptions::default(), &overrides).await
    else {
        return; // skipped, said by the check
    };
    for name in ["a", "b", "c"] {
        scenario.spawn_worker(name);
    }
    scenario.wait_ready().await;
    // 100 eligible postings per marketplace: about 10 s each at 10/s.
    let load = load("rate", 250, 1);
    scenario.publish(&load.events).await;
    scenario.wait_settled(&load, Duration::from_secs(120)).await;
    scenario.assert_promise(&load).await;

    let mut times: BTreeMap<String, Vec<chrono::DateTime<chrono::Utc>>> = BTreeMap::new();
    for key in &load.eligible {
        let (m, p) = key.split_once(':').expect("a key");
        let posting = bidorch::posting::PostingKey::new(m, p).expect("a key");
        for bid in scenario.sandbox.bids(&posting) {
            times.entry(m.to_owned()).or_default().push(bid.created_at);
        }
    }
    let limit = (RATE + BURST) as usize;
    let mut busiest = BTreeMap::new();
    for (marketplace, mut at) in times {
        at.sort();
        let mut most = 0;
        for (i, start) in at.iter().enumerate() {
            let end = *start + chrono::Duration::seconds(1);
            most = most.max(at[i..].iter().take_while(|t| **t < end).count());
        }
        assert!(
            most <= limit,
            "{marketplace}: {most} bids in one second, above {RATE}/s + burst {BURST}"
        );
        busiest.insert(marketplace, most);
    }
    eprintln!(
        "rate limit: {RATE}/s burst {BURST} per marketplace, 3 workers: busiest 1-s window {busiest:?} (limit {limit})"
    );
    scenario.stop().await;
}
