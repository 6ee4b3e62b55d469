//! Exactly once against a marketplace API without idempotency keys, as the product runs: three
//! `bidorch worker` processes with the default configuration, `freelancer` on the Freelancer API,
//! a sandbox that loses answers after creating bids, answers 503/429 (lookups too), lists other
//! bidders' bids, and creates a second bid whenever one is sent (as a careless marketplace
//! would; Freelancer itself refuses it) — and meanwhile one worker SIGKILLed mid-run, leaving
//! sends of unknown fate under leases only their TTL frees.
//!
//! And with the sandbox refusing a second bid as Freelancer does, next to a marketplace on the
//! contract: a token revoked for 30 s and a worker SIGSTOPped past its lease and `lookup_delay`
//! — bids found by lookup end `placed`, never `rejected`, and nothing is parked.
//!
//! The promise, checked at the end: one bid per eligible posting, none twice, none for the
//! others, nothing parked but poison, the ledger agreeing. The summary lines report the lookups
//! made and the resends they avoided.

use std::time::{Duration, Instant};

use bidorch::marketplace::sandbox::SandboxOptions;

use crate::support;
use support::queue::eventually;
use support::scenario::{Scenario, api_load};

const WORKERS: usize = 3;
const POSTINGS: usize = 300;
const COPIES: usize = 2;
const SETTLE: Duration = Duration::from_secs(300);
/// How long the token stays revoked at the marketplace.
const REVOKED: Duration = Duration::from_secs(30);
/// Longer than the default lease (30 s) and `lookup_delay` (twice the 5 s request timeout).
const FROZEN: Duration = Duration::from_secs(35);

/// [`WORKERS`] workers with the default configuration and `freelancer` on the Freelancer API,
/// ready, against a sandbox that answers slowly (5 ms) and lists rivals' bids on each project.
async fn fleet(prefix: &str, sandbox: SandboxOptions) -> Option<Scenario> {
    let sandbox = SandboxOptions {
        latency: Duration::from_millis(5),
        rival_bids: 3,
        ..sandbox
    };
    let api = [(
        "BIDORCH__MARKETPLACES__FREELANCER__API",
        "freelancer".to_owned(),
    )];
    let mut scenario = Scenario::start(prefix, sandbox, &api).await?;
    for i in 0..WORKERS {
        scenario.spawn_worker(&format!("w{i}"));
    }
    scenario.wait_ready().await;
    Some(scenario)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_an_api_without_idempotency_keys_lose_answers_die_and_never_bid_twice() {
    let sandbox = SandboxOptions {
        fail_rate: 0.1,
        lose_rate: 0.15,
        seed: 11,
        // Any second send would be a second bid.
        refuse_second_bid: false,
        ..SandboxOptions::default()
    };
    let Some(mut scenario) = fleet("flchaos", sandbox).await else {
        return; // skipped, said by the check
    };
    let load = api_load(POSTINGS, COPIES, false);
    let eligible = load.eligible.len() as u64;
    let started = Instant::now();
    scenario.publish(&load.events).await;

    let sandbox = scenario.sandbox.clone();
    eventually(SETTLE, "a third of the bids", || async {
        sandbox.stats().bids_created * 3 >= eligible
    })
    .await;
    scenario.workers[0].kill();
    scenario.spawn_worker("w0-again");

    scenario.wait_settled(&load, SETTLE).await;
    let drained_in = started.elapsed();
    scenario.assert_promise(&load).await;
    let stats = scenario.sandbox.stats();
    assert!(
        stats.lost_responses > 0,
        "the sandbox lost answers: {stats:?}"
    );
    assert!(stats.lookups > 0, "lost answers were looked up");
    scenario.workers.remove(0); // the killed one
    scenario.stop().await;
    // Every lost answer would have been a second bid had it been sent again (the sandbox
    // creates one): each was settled by a lookup instead.
    eprintln!(
        "freelancer chaos: {WORKERS} workers (defaults, freelancer API), {POSTINGS} postings x \
         {COPIES} copies, one SIGKILLed; sandbox {} faults, {} answers lost after the bid was \
         created, {} lookups: {} bids for {eligible} eligible, 0 duplicates ({} resends avoided), \
         drained in {drained_in:.1?}",
        stats.faults, stats.lost_responses, stats.lookups, stats.bids_created, stats.lost_responses,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_and_a_frozen_worker_on_both_apis_reject_and_park_nothing() {
    let sandbox = SandboxOptions {
        lose_rate: 0.1,
        seed: 5,
        // As Freelancer does.
        refuse_second_bid: true,
        ..SandboxOptions::default()
    };
    let Some(mut scenario) = fleet("flfrozen", sandbox).await else {
        return; // skipped, said by the check
    };
    let load = api_load(POSTINGS, COPIES, true);
    let eligible = load.eligible.len() as u64;
    let started = Instant::now();
    scenario.publish(&load.events).await;

    let sandbox = scenario.sandbox.clone();
    let bids_reach = |share: u64| {
        let sandbox = sandbox.clone();
        async move {
            eventually(SETTLE, &format!("{share}% of the bids"), || async {
                sandbox.stats().bids_created * 100 >= eligible * share
            })
            .await;
        }
    };
    bids_reach(15).await;
    // Rotated at the marketplace before the workers got the new one: every call is refused.
    scenario
        .sandbox
        .set_token(Some("rotated-elsewhere".to_owned()));
    tokio::time::sleep(REVOKED).await;
    scenario
        .sandbox
        .set_token(Some(support::scenario::TOKEN.to_owned()));

    bids_reach(40).await;
    // Frozen past its lease (the default 30 s) and lookup_delay (10 s): what it held is taken
    // over and looked up; when it wakes, whatever it still sends is refused as a second bid.
    scenario.workers[1].signal("STOP");
    let frozen_at = Instant::now();
    tokio::time::sleep(FROZEN).await;
    scenario.workers[1].signal("CONT");
    let frozen_for = frozen_at.elapsed();

    scenario.wait_settled(&load, SETTLE).await;
    let drained_in = started.elapsed();
    // Nothing rejected, nothing pending, nothing parked: checked with the rest of the promise.
    scenario.assert_promise(&load).await;
    let stats = scenario.sandbox.stats();
    scenario.stop().await;
    eprintln!(
        "frozen: {WORKERS} workers (defaults), {POSTINGS} postings x {COPIES} copies on the \
         contract and the Freelancer API; token revoked {REVOKED:?}, a worker SIGSTOPped \
         {frozen_for:.1?}; sandbox {} lost answers, {} second bids refused, {} lookups: {} bids \
         for {eligible} eligible, 0 duplicates, 0 rejected, 0 parked, drained in {drained_in:.1?}",
        stats.lost_responses, stats.conflicts, stats.lookups, stats.bids_created,
    );
}
