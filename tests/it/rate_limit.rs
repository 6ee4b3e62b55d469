//! The per-marketplace request rate is shared by the fleet: 3 worker processes, a limit of
//! R requests/s with burst B on each marketplace, measured at the sandbox by its own clock, and
//! every eligible posting still gets its one bid (over the rate, a posting waits; it is never
//! parked for it).
//!
//! The limiter admits on Redis's clock; the sandbox stamps a bid when its request arrives. A
//! request admitted a little before another can arrive after it (a worker descheduled between
//! the admission and the send, on a loaded machine), so a one-second window at the sandbox may
//! hold what the limiter admitted over 1 s + that spread. The assertions allow
//! [`DELIVERY_SPREAD_MS`] for it and still fail a limiter that is not shared: three workers each
//! with their own bucket would send three times the rate.

use std::collections::BTreeMap;
use std::time::Duration;

use bidorch::marketplace::sandbox::SandboxOptions;

use crate::support;
use support::scenario::{Scenario, load};

const RATE: u32 = 10;
const BURST: u32 = 5;
/// How much later than its admission order a request may reach the sandbox.
const DELIVERY_SPREAD_MS: u32 = 500;
const DELIVERY_SPREAD: chrono::Duration = chrono::Duration::milliseconds(DELIVERY_SPREAD_MS as i64);

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
    // At most BURST at once, then one per 1/RATE s: a window of 1 s + the spread holds at most
    // BURST + RATE × (1 s + spread) admissions.
    let window_limit = (BURST + RATE + RATE * DELIVERY_SPREAD_MS / 1000) as usize;
    let mut busiest = BTreeMap::new();
    for (marketplace, mut at) in times {
        at.sort();
        let mut most = 0;
        for (i, start) in at.iter().enumerate() {
            let end = *start + chrono::Duration::seconds(1);
            most = most.max(at[i..].iter().take_while(|t| **t < end).count());
        }
        assert!(
            most <= window_limit,
            "{marketplace}: {most} bids in one second, above {RATE}/s + burst {BURST} \
             + {DELIVERY_SPREAD_MS} ms of delivery spread ({window_limit})"
        );
        // Sustained: after the burst, the rest took at least 1/RATE s each.
        let (first, last) = (at[0], at[at.len() - 1]);
        let least = chrono::Duration::milliseconds(
            (at.len().saturating_sub(BURST as usize) as i64) * 1000 / i64::from(RATE),
        ) - DELIVERY_SPREAD;
        assert!(
            last - first >= least,
            "{marketplace}: {} bids in {} ms, faster than {RATE}/s after a burst of {BURST}",
            at.len(),
            (last - first).num_milliseconds()
        );
        busiest.insert(
            marketplace,
            (most, at.len(), (last - first).num_milliseconds()),
        );
    }
    eprintln!(
        "rate limit: {RATE}/s burst {BURST} per marketplace, 3 workers: (busiest 1-s window, bids, ms from first to last) {busiest:?} (window limit {window_limit})"
    );
    scenario.stop().await;
}
