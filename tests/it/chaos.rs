//! Chaos, bounded to a few minutes: K `bidorch worker` processes and the sandbox against the
//! real services while M postings x D copies (and poison) flow, and meanwhile a worker is
//! SIGKILLed and replaced, another SIGSTOPped for longer than `lock.ttl` and resumed, the
//! workers' Redis (a private one) restarted with its keys gone, every broker connection of the
//! workers closed, and the sandbox answering 503/429 and losing answers after placing bids.
//!
//! The promise, checked at the end: one bid per eligible posting, none for the others, exactly
//! the poison parked, every queue drained, the ledger agreeing with the marketplace, and each
//! worker exiting 0 on SIGTERM. One summary line says what happened.

use std::time::{Duration, Instant};

use bidorch::marketplace::sandbox::SandboxOptions;

use crate::support;
use support::lock::PrivateRedis;
use support::queue::{Inspector, eventually};
use support::rabbitmqctl::rabbitmqctl;
use support::scenario::{Scenario, load};

const WORKERS: usize = 4;
const POSTINGS: usize = 400;
const COPIES: usize = 2;
const POISON: usize = 5;
/// Short, so that a SIGSTOP longer than it fits in the test.
const TTL: Duration = Duration::from_secs(3);
const STOPPED: Duration = Duration::from_secs(5);
const SETTLE: Duration = Duration::from_secs(240);

/// Closes every broker connection whose name contains `names`; how many were closed.
async fn close_connections(names: &str) -> usize {
    let listed = rabbitmqctl(&[
        "list_connections",
        "--quiet",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .await
    .expect("list_connections");
    let mut closed = 0;
    for line in listed.lines().filter(|l| l.contains(names)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        if rabbitmqctl(&["close_connection", pid, "chaos test"])
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_stopped_and_cut_off_still_bid_exactly_once() {
    if rabbitmqctl(&["status"]).await.is_err() {
        support::skip("rabbitmqctl is unavailable (run as root, or set BIDORCH_RABBITMQCTL)");
        return;
    }
    let Some(mut redis) = PrivateRedis::reserve(false) else {
        return; // skipped, said by the check
    };
    redis.start().await;
    let Some(mut scenario) = Scenario::start(
        "chaos",
        SandboxOptions {
            fail_rate: 0.1,
            lose_rate: 0.05,
            latency: Duration::from_millis(10),
            seed: 7,
            ..SandboxOptions::default()
        },
        &[
            ("REDIS_URL", redis.url()),
            ("BIDORCH__LOCK__TTL", "3s".to_owned()),
            ("BIDORCH__AMQP__RETRY_TIERS", "200ms,1s,5s".to_owned()),
            ("BIDORCH__WORKER__RETRY_TRANSIENT", "1s".to_owned()),
            ("BIDORCH__WORKER__RETRY_UNAVAILABLE", "1s".to_owned()),
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
    let mut load = load("chaos", POSTINGS, COPIES);
    let started = Instant::now();
    scenario.publish(&load.events).await;
    let inspector = Inspector::connect().await;
    for i in 0..POISON {
        let body = format!("{{\"event_id\":\"poison-{i}\",\"marketplace\":\"upwork\"}}");
        inspector
            .publish(
                &scenario.settings.amqp.exchange,
                "posting.upwork",
                body.as_bytes(),
                lapin::BasicProperties::default(),
            )
            .await;
    }
    load.poison = POISON;
    let eligible = load.eligible.len() as u64;
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

    bids_reach(10).await;
    scenario.workers[0].kill();
    scenario.spawn_worker("w0-again");

    bids_reach(25).await;
    scenario.workers[1].signal("STOP");
    let stopped_at = Instant::now();
    // Stopped past its TTL: whatever it holds is taken over while it sleeps.
    tokio::time::sleep(STOPPED.max(TTL + Duration::from_secs(1))).await;
    scenario.workers[1].signal("CONT");
    let stopped_for = stopped_at.elapsed();

    bids_reach(45).await;
    redis.kill();
    redis.start().await;

    bids_reach(65).await;
    let closed = close_connections(&scenario.names).await;
    assert!(closed >= WORKERS, "closed only {closed} broker connections");

    scenario.wait_settled(&load, SETTLE).await;
    let drained_in = started.elapsed();
    scenario.assert_promise(&load).await;
    let stats = scenario.sandbox.stats();
    scenario.workers.remove(0); // the killed one
    scenario.stop().await;
    eprintln!(
        "chaos: {WORKERS} workers, {POSTINGS} postings x {COPIES} copies + {POISON} poison; \
         SIGKILL+restart, SIGSTOP {stopped_for:.1?} (lock.ttl {TTL:?}), Redis restarted, {closed} \
         broker connections closed, sandbox {} faults and {} lost answers: {} bids for {eligible} \
         eligible, 0 duplicates, {POISON} parked (poison), drained in {drained_in:.1?}, all \
         workers exited 0",
        stats.faults, stats.lost_responses, stats.bids_created
    );
}
