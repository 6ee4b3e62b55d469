//! Outages never lose a posting: waiting is not failing.
//!
//! Each scenario runs separate `bidorch worker` processes against the real RabbitMQ, Redis and
//! PostgreSQL, and makes the fault for real — a SIGKILLed worker, a private Redis stopped, a
//! TCP proxy in front of PostgreSQL cut, the sandbox marketplace answering 503 or refusing the
//! token — for longer than `max_attempts` x the largest retry tier (3 x 1 s here), which is what
//! the old behaviour survived. Every eligible posting must end with exactly one bid, nothing may
//! be parked, every queue must drain, and the ledger must agree. The scenarios' own names keep
//! them apart, so they run side by side.

use std::time::{Duration, Instant};

use bidorch::marketplace::sandbox::{Fault, SandboxOptions};

use crate::support;
use support::queue::eventually;
use support::scenario::{Scenario, TOKEN, load};

/// Short tiers and few attempts: an outage longer than `max_attempts x 1s` used to park
/// postings; now it must not.
fn short_windows() -> Vec<(&'static str, String)> {
    vec![
        ("BIDORCH__AMQP__RETRY_TIERS", "200ms,1s".to_owned()),
        ("BIDORCH__AMQP__MAX_ATTEMPTS", "3".to_owned()),
        ("BIDORCH__WORKER__RETRY_UNAVAILABLE", "200ms".to_owned()),
        ("BIDORCH__WORKER__RETRY_TRANSIENT", "200ms".to_owned()),
    ]
}

/// How long each outage lasts: twice what `max_attempts` one-second retries survived.
const OUTAGE: Duration = Duration::from_secs(6);
const SETTLE: Duration = Duration::from_secs(120);

/// Waits until the sandbox has created at least `n` bids.
async fn bids_reach(scenario: &Scenario, n: u64) {
    eventually(SETTLE, &format!("{n} bids"), || async {
        scenario.sandbox.stats().bids_created >= n
    })
    .await;
}

/// Waits until some worker's `/readyz` reports `dependency` paused, and its gauge says so.
async fn seen_paused(scenario: &Scenario, dependency: &str, reason: &str) {
    let gauge = format!("bidorch_paused{{dependency=\"{dependency}\",reason=\"{reason}\"}}");
    eventually(
        SETTLE,
        &format!("{dependency} paused ({reason})"),
        || async {
            for w in &scenario.workers {
                if let Some((503, report)) = w.ready().await
                    && report["paused"][dependency].is_string()
                    && w.metric(&gauge).await == Some(1.0)
                {
                    return true;
                }
            }
            false
        },
    )
    .await;
}

/// Waits until every worker is ready again with nothing paused.
async fn all_resumed(scenario: &Scenario) {
    scenario.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_workers_postings_are_bid_after_its_default_lease_expires() {
    // The default configuration (lock.ttl 30s, the default tiers and attempts): only names.
    let Some(mut scenario) = Scenario::start(
        "kill",
        // A marketplace slow enough (well inside the default 5 s request timeout) that a
        // worker holds a full prefetch of postings for a second at a time.
        SandboxOptions {
            latency: Duration::from_secs(1),
            ..SandboxOptions::default()
        },
        &[],
    )
    .await
    else {
        return;
    };
    // The victim starts alone and the whole load is published to it, so it builds a backlog
    // (a prefetch of 256 a second) however fast the publisher is; the others join while it
    // still works through it.
    let load = load("kill", 1000, 2);
    scenario.spawn_worker("a");
    scenario.wait_ready().await;
    scenario.publish(&load.events).await;
    for name in ["b", "c"] {
        scenario.spawn_worker(name);
    }
    scenario.wait_ready().await;

    // Kill it in the middle of its work: it holds leases and unacked deliveries, some of them
    // with the marketplace call already sent.
    eventually(SETTLE, "the victim has postings in flight", || async {
        scenario.workers[0]
            .metric("bidorch_postings_in_flight")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    scenario.workers[0].kill();
    let killed = Instant::now();

    scenario.wait_settled(&load, SETTLE).await;
    scenario.assert_promise(&load).await;
    // Its redelivered postings met its still-live leases and waited for them, without
    // counting an attempt (nothing was parked, above).
    let mut waited = 0.0;
    for w in &scenario.workers[1..] {
        waited += w
            .metric("bidorch_retries_total{reason=\"lock_held\"}")
            .await
            .unwrap_or(0.0);
    }
    assert!(waited >= 1.0, "no posting met the killed worker's lease");
    eprintln!(
        "sigkill: settled {:?} after the kill, {waited} lease waits",
        killed.elapsed()
    );
    scenario.workers.remove(0);
    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_longer_than_every_retry_window_loses_nothing() {
    let Some(mut redis) = support::lock::PrivateRedis::reserve(false) else {
        return;
    };
    redis.start().await;
    let mut overrides = short_windows();
    overrides.push(("REDIS_URL", redis.url()));
    let Some(mut scenario) = Scenario::start(
        "redis",
        SandboxOptions {
            latency: Duration::from_millis(10),
            ..SandboxOptions::default()
        },
        &overrides,
    )
    .await
    else {
        return;
    };
    // Half before the fault, half once it has begun: postings meet the fault however fast the
    // machine is.
    let (before, after) = (load("redis_a", 100, 2), load("redis_b", 100, 2));
    scenario.spawn_worker("a");
    scenario.spawn_worker("b");
    scenario.wait_ready().await;
    scenario.publish(&before.events).await;

    bids_reach(&scenario, 30).await;
    redis.kill();
    let down = Instant::now();
    scenario.publish(&after.events).await;
    let load = before.join(after);
    seen_paused(&scenario, "lock_store", "unavailable").await;
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    redis.start().await;
    let back = Instant::now();

    all_resumed(&scenario).await;
    scenario.wait_settled(&load, SETTLE).await;
    scenario.assert_promise(&load).await;
    eprintln!(
        "redis: down {:?}, backlog drained {:?} after it came back",
        back - down,
        back.elapsed()
    );
    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_longer_than_every_retry_window_loses_nothing() {
    let upstream = support::host_port(&support::database_url(), 5432);
    let mut proxy = support::proxy::TcpProxy::start(&upstream).await;
    let mut overrides = short_windows();
    overrides.push(("DATABASE_URL", proxy.url_for(&support::database_url())));
    overrides.push(("BIDORCH__DATABASE__CALL_TIMEOUT", "3s".to_owned()));
    overrides.push(("BIDORCH__DATABASE__STATEMENT_TIMEOUT", "2s".to_owned()));
    let Some(mut scenario) = Scenario::start(
        "ledger",
        SandboxOptions {
            latency: Duration::from_millis(10),
            ..SandboxOptions::default()
        },
        &overrides,
    )
    .await
    else {
        return;
    };
    // Half before the fault, half once it has begun: postings meet the fault however fast the
    // machine is.
    let (before, after) = (load("ledger_a", 100, 2), load("ledger_b", 100, 2));
    scenario.spawn_worker("a");
    scenario.spawn_worker("b");
    scenario.wait_ready().await;
    scenario.publish(&before.events).await;

    bids_reach(&scenario, 30).await;
    proxy.cut().await;
    let down = Instant::now();
    scenario.publish(&after.events).await;
    let load = before.join(after);
    seen_paused(&scenario, "ledger", "unavailable").await;
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    proxy.restore().await;
    let back = Instant::now();

    all_resumed(&scenario).await;
    scenario.wait_settled(&load, SETTLE).await;
    scenario.assert_promise(&load).await;
    eprintln!(
        "postgres: cut {:?}, backlog drained {:?} after it came back",
        back - down,
        back.elapsed()
    );
    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marketplace_answering_503_for_longer_than_every_retry_window_loses_nothing() {
    let Some(mut scenario) =
        Scenario::start("m503", SandboxOptions::default(), &short_windows()).await
    else {
        return;
    };
    // Half before the fault, half once it has begun: postings meet the fault however fast the
    // machine is.
    let (before, after) = (load("m503_a", 100, 2), load("m503_b", 100, 2));
    scenario.spawn_worker("a");
    scenario.spawn_worker("b");
    scenario.wait_ready().await;
    scenario.publish(&before.events).await;

    bids_reach(&scenario, 30).await;
    scenario.sandbox.set_outage(Some(Fault::unavailable()));
    let down = Instant::now();
    scenario.publish(&after.events).await;
    let load = before.join(after);
    // Both marketplaces are served by the sandbox: whichever trips first.
    eventually(SETTLE, "a marketplace paused", || async {
        for w in &scenario.workers {
            if let Some((503, report)) = w.ready().await
                && report["paused"]
                    .as_object()
                    .is_some_and(|p| p.keys().any(|k| k.starts_with("marketplace:")))
            {
                return true;
            }
        }
        false
    })
    .await;
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    scenario.sandbox.set_outage(None);
    let back = Instant::now();

    all_resumed(&scenario).await;
    scenario.wait_settled(&load, SETTLE).await;
    scenario.assert_promise(&load).await;
    eprintln!(
        "503: {:?}, backlog drained {:?} after it ended",
        back - down,
        back.elapsed()
    );
    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_never_records_a_posting_rejected() {
    let Some(mut scenario) =
        Scenario::start("m401", SandboxOptions::default(), &short_windows()).await
    else {
        return;
    };
    // Half before the fault, half once it has begun: postings meet the fault however fast the
    // machine is.
    let (before, after) = (load("m401_a", 100, 2), load("m401_b", 100, 2));
    scenario.spawn_worker("a");
    scenario.spawn_worker("b");
    scenario.wait_ready().await;
    scenario.publish(&before.events).await;

    bids_reach(&scenario, 30).await;
    // The marketplace stops accepting our token: every call is answered 401.
    scenario
        .sandbox
        .set_token(Some("rotated-elsewhere".to_owned()));
    let revoked = Instant::now();
    scenario.publish(&after.events).await;
    let load = before.join(after);
    seen_paused(&scenario, "marketplace:upwork", "credentials").await;
    tokio::time::sleep(OUTAGE.saturating_sub(revoked.elapsed())).await;
    scenario.sandbox.set_token(Some(TOKEN.to_owned()));

    all_resumed(&scenario).await;
    scenario.wait_settled(&load, SETTLE).await;
    // No posting recorded `rejected` (asserted inside), every one bid once.
    scenario.assert_promise(&load).await;
    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_base_url_pauses_its_marketplace_instead_of_rejecting() {
    let Some(mut scenario) =
        Scenario::start("m404", SandboxOptions::default(), &short_windows()).await
    else {
        return;
    };
    let load = load("m404", 60, 1);
    // freelancer's base_url points at a path the marketplace does not serve: 404 for all.
    let wrong = (
        "BIDORCH__MARKETPLACES__FREELANCER__BASE_URL",
        format!("{}/nowhere/freelancer", scenario.sandbox_url),
    );
    scenario.spawn_worker_with("a", std::slice::from_ref(&wrong));
    scenario.wait_ready().await;
    scenario.publish(&load.events).await;

    seen_paused(&scenario, "marketplace:freelancer", "not_found").await;
    let upwork = load
        .eligible
        .iter()
        .filter(|k| k.starts_with("upwork:"))
        .count() as u64;
    bids_reach(&scenario, upwork).await;
    let counts = scenario.ledger.reports.counts_by_state().await.unwrap();
    assert!(
        counts
            .iter()
            .all(|(s, n)| *s != bidorch::ledger::LedgerState::Rejected || *n == 0),
        "a 404 for every posting is the base_url, never the postings: {counts:?}"
    );

    // The operator fixes the configuration: a worker with the right base_url takes over.
    scenario.stop().await;
    scenario.workers.clear();
    scenario.spawn_worker("b");
    scenario.wait_settled(&load, SETTLE).await;
    scenario.assert_promise(&load).await;
    scenario.stop().await;
}
