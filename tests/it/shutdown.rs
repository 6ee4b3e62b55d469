//! SIGTERM during load, on real RabbitMQ, Redis and PostgreSQL with two `bidorch worker`
//! processes: the signalled worker finishes what it has in flight, acks it, and exits 0 within
//! its grace period; everything it had not started is redelivered to the other worker. Zero lost
//! (every eligible posting bid once, every ledger row final, nothing left in any queue) and zero
//! duplicates (the sandbox marketplace does not honour idempotency keys, so a second request for
//! a posting would show as a second bid).
//!
//! And the other way a worker process ends: when consuming cannot be resumed (here, its
//! virtual host is deleted under it), it exits non-zero so an orchestrator restarts it, rather
//! than living on as a process that consumes nothing.
//!
//! The sandbox answers each bid 100ms after recording it, so a worker always has requests in
//! flight whose bid already exists: abandoning those instead of finishing them would be exactly
//! the "sent but not recorded" case that produces a duplicate on redelivery.

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bidorch::config::Settings;
use bidorch::ledger::LedgerState;
use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::publish::{OutgoingEvent, Publisher};
use serde_json::json;
use support::process::WorkerProcess;
use support::queue::{Cleanup, Inspector, eventually};
use support::rabbitmqctl::{Vhost, rabbitmqctl};

const TOKEN: &str = "shutdown-token";
const POSTINGS: usize = 300;
const GRACE: &str = "10s";
/// How long a signalled worker may take to exit: its grace period plus start-up slack for a
/// loaded CI machine. A liveness bound, not a performance assertion.
const EXIT_LIMIT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(120);

/// The environment both workers share: one queue, one ledger schema, one key prefix.
fn shared_env(names: &str, sandbox: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AMQP_URL", support::amqp_url()),
        ("REDIS_URL", support::redis_url()),
        ("DATABASE_URL", support::database_url()),
        ("BIDORCH__AMQP__EXCHANGE", format!("{names}.ex")),
        ("BIDORCH__AMQP__QUEUE", names.to_owned()),
        ("BIDORCH__AMQP__RETRY_TIERS", "200ms,1s".into()),
        // Small prefetch: the load lasts long enough to signal a worker in the middle of it.
        ("BIDORCH__AMQP__PREFETCH", "4".into()),
        ("BIDORCH__REDIS__KEY_PREFIX", format!("{names}:")),
        ("BIDORCH__DATABASE__SCHEMA", names.to_owned()),
        ("BIDORCH__DATABASE__MAX_CONNECTIONS", "4".into()),
        ("BIDORCH__WORKER__SHUTDOWN_GRACE", GRACE.into()),
        ("BIDORCH__WORKER__RETRY_LOCK_HELD", "200ms".into()),
        ("BIDORCH__WORKER__RETRY_UNAVAILABLE", "1s".into()),
        ("BIDORCH__WORKER__RETRY_TRANSIENT", "200ms".into()),
        ("BIDORCH__BIDDING__MIN_BUDGET", "100".into()),
        (
            "BIDORCH__MARKETPLACES__UPWORK__BASE_URL",
            format!("{sandbox}/upwork"),
        ),
        (
            "BIDORCH__MARKETPLACES__FREELANCER__BASE_URL",
            format!("{sandbox}/freelancer"),
        ),
        (
            "BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV",
            "BIDORCH_UPWORK_TOKEN".into(),
        ),
        (
            "BIDORCH__MARKETPLACES__FREELANCER__TOKEN_ENV",
            "BIDORCH_FREELANCER_TOKEN".into(),
        ),
    ]
}

/// A `bidorch worker` process on the shared environment, plus `extra` (later ones win).
fn spawn(name: &str, names: &str, sandbox: &str, extra: &[(&str, String)]) -> WorkerProcess {
    let mut env: Vec<(String, String)> = shared_env(names, sandbox)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    env.push((
        "BIDORCH__WORKER__INSTANCE_ID".into(),
        format!("{names}-{name}"),
    ));
    env.push(("BIDORCH_UPWORK_TOKEN".into(), TOKEN.into()));
    env.push(("BIDORCH_FREELANCER_TOKEN".into(), TOKEN.into()));
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    WorkerProcess::spawn(name, &env)
}

/// `bidorch_postings_in_flight` from a worker's `/metrics` (0 when it does not answer).
async fn in_flight(worker: &WorkerProcess) -> f64 {
    worker
        .metric("bidorch_postings_in_flight")
        .await
        .unwrap_or(0.0)
}

/// `POSTINGS` postings over two marketplaces; every fifth is under the minimum budget.
/// Returns the messages to publish (a third of the postings twice, the copy a few messages
/// after the original so both workers may hold them at once), eligible and ineligible keys.
fn messages() -> (Vec<OutgoingEvent>, Vec<String>, Vec<String>) {
    let (mut bodies, mut eligible, mut ineligible) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..POSTINGS {
        let marketplace = if n % 2 == 0 { "upwork" } else { "freelancer" };
        let posting_id = format!("sig_{n:04}");
        let max = if n % 5 == 4 { "50" } else { "1200.00" };
        let key = format!("{marketplace}:{posting_id}");
        if n % 5 == 4 {
            ineligible.push(key);
        } else {
            eligible.push(key);
        }
        let body = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "marketplace": marketplace,
            "posting_id": posting_id,
            "title": "Keep a queue consumer alive",
            "budget": {"min": 10, "max": max, "currency": "USD", "kind": "fixed"},
        });
        bodies.push(OutgoingEvent::parse(body.to_string()).expect("valid event"));
    }
    let mut out = Vec::new();
    for n in 0..POSTINGS {
        out.push(bodies[n].clone());
        if n >= 5 && (n - 5) % 3 == 0 {
            out.push(bodies[n - 5].clone());
        }
    }
    (out, eligible, ineligible)
}

/// Messages ready in the work queue and every wait queue.
async fn waiting(inspector: &Inspector, settings: &Settings) -> u32 {
    let mut n = inspector.ready(&settings.amqp.queue).await;
    for tier in &settings.amqp.retry_tiers {
        n += inspector.ready(&settings.amqp.retry_queue(*tier)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_in_flight_work_exits_zero_and_loses_nothing() {
    if !(support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await)
    {
        return;
    }
    // Arrange: a naive, slow sandbox; the shared topology and ledger schema made up front (so
    // the two workers do not race to create them); two worker processes, both consuming.
    let (sandbox, sandbox_url) = support::serve_sandbox(SandboxOptions {
        token: Some(TOKEN.to_owned()),
        honour_idempotency: false,
        latency: Duration::from_millis(100),
        ..SandboxOptions::default()
    })
    .await;
    let names = support::unique("sigterm");
    let env: HashMap<String, String> = shared_env(&names, &sandbox_url)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let settings = Settings::load_from(None, &env).expect("test settings are valid");
    let _cleanup = Cleanup(settings.amqp.clone());
    let ledger = bidorch::app::ledger(&settings.database)
        .await
        .unwrap()
        .reports;
    support::queue::declare_topology(&settings.amqp).await;
    let mut a = spawn("A", &names, &sandbox_url, &[]);
    let mut b = spawn("B", &names, &sandbox_url, &[]);
    for w in [&a, &b] {
        eventually(WAIT, &format!("worker {} ready", w.name), || async {
            matches!(w.get("/readyz").await, Some((200, _)))
        })
        .await;
    }

    // Act: publish everything, then SIGTERM worker A while bids are flowing and A has work in
    // flight.
    let (events, eligible, ineligible) = messages();
    let publisher = Publisher::connect(&settings.amqp).await.unwrap();
    for result in publisher.publish_many(&events).await {
        result.expect("published and confirmed");
    }
    publisher.close().await;
    eventually(WAIT, "bids arriving and A busy", || async {
        sandbox.stats().bids_created >= 20 && in_flight(&a).await >= 1.0
    })
    .await;
    let bids_at_signal = sandbox.stats().bids_created;
    let signalled = Instant::now();
    a.terminate();
    let status = a.exit_status(EXIT_LIMIT).await;
    let exit_after = signalled.elapsed();

    // Assert (A): exit 0, and everything it had taken was settled, none abandoned.
    assert!(status.success(), "worker A exited with {status}");
    let shutdown = a.logged("Shutdown requested; no longer consuming");
    assert_eq!(shutdown.len(), 1, "A logged its shutdown once");
    let in_flight_at_signal = shutdown[0]["in_flight"].as_u64().expect("in_flight field");
    assert!(
        in_flight_at_signal >= 1,
        "A had work in flight when signalled"
    );
    let stopped = a.logged("Worker stopped");
    assert_eq!(stopped.len(), 1, "A logged its stop once");
    let (received, settled, abandoned) = (
        stopped[0]["received"].as_u64().unwrap(),
        stopped[0]["settled"].as_u64().unwrap(),
        stopped[0]["abandoned"].as_u64().unwrap(),
    );
    assert_eq!(
        abandoned, 0,
        "A finished its in-flight work within the grace"
    );
    assert_eq!(settled, received, "A settled every delivery it took");
    assert!(received > 0, "A took part in the load");

    // B alone finishes the rest, including whatever A had prefetched but not started.
    eventually(
        WAIT,
        "every posting final and the queues drained",
        || async {
            let inspector = Inspector::connect().await;
            // Nothing in flight either: a duplicate that met a lease still held goes back to
            // wait after every row is final.
            let done = support::final_rows(&*ledger).await == POSTINGS as u64
                && waiting(&inspector, &settings).await == 0
                && b.metric("bidorch_postings_in_flight").await == Some(0.0)
                && waiting(&inspector, &settings).await == 0;
            let _ = inspector.connection.close(200, "OK".into()).await;
            done
        },
    )
    .await;
    b.terminate();
    let b_status = b.exit_status(EXIT_LIMIT).await;
    assert!(b_status.success(), "worker B exited with {b_status}");
    let b_stopped = b.logged("Worker stopped");
    assert_eq!(b_stopped[0]["abandoned"].as_u64(), Some(0));

    // Zero lost, zero duplicates: one bid per eligible posting, none for the rest, and with both
    // workers gone nothing is left in any queue (an unacked message would be back as ready).
    let stats = sandbox.stats();
    assert!(
        stats.duplicates.is_empty(),
        "duplicates: {:?}",
        stats.duplicates
    );
    for key in &eligible {
        assert_eq!(stats.postings.get(key).map_or(0, |p| p.bids), 1, "{key}");
    }
    for key in &ineligible {
        assert_eq!(stats.postings.get(key).map_or(0, |p| p.bids), 0, "{key}");
    }
    assert_eq!(stats.bids_created, eligible.len() as u64);
    let counts: BTreeMap<LedgerState, u64> = ledger
        .counts_by_state()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        counts.get(&LedgerState::Placed),
        Some(&(eligible.len() as u64))
    );
    assert_eq!(
        counts.get(&LedgerState::Skipped),
        Some(&(ineligible.len() as u64))
    );
    assert_eq!(counts.get(&LedgerState::Pending).copied().unwrap_or(0), 0);
    let inspector = Inspector::connect().await;
    assert_eq!(
        waiting(&inspector, &settings).await,
        0,
        "work and wait queues empty"
    );
    assert_eq!(
        inspector.ready(&settings.amqp.dead_letter_queue()).await,
        0,
        "nothing parked"
    );
    let _ = inspector.connection.close(200, "OK".into()).await;
    eprintln!(
        "shutdown: {} messages for {} postings; SIGTERM to A after {bids_at_signal} bids with {in_flight_at_signal} in flight; \
         A exited 0 after {:.2}s (grace {GRACE}), settled {settled}/{received}, abandoned 0; \
         B settled {}; bids {}, duplicates 0",
        events.len(),
        POSTINGS,
        exit_after.as_secs_f64(),
        b_stopped[0]["settled"],
        stats.bids_created,
    );

    drop((a, b));
    support::drop_schema(&names).await;
    support::delete_redis_prefix(&format!("{names}:")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_resume_consuming_exits_non_zero() {
    if !(support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await)
    {
        return;
    }
    // Arrange: a worker process in a virtual host of its own, consuming.
    let names = support::unique("lost");
    let Some(vhost) = Vhost::create(&names).await else {
        return;
    };
    let mut amqp_url = url::Url::parse(&support::amqp_url()).unwrap();
    amqp_url.set_path(&format!("/{names}"));
    let mut worker = spawn(
        "lost",
        &names,
        "http://127.0.0.1:9",
        &[
            ("AMQP_URL", amqp_url.to_string()),
            ("BIDORCH__AMQP__RECONNECT_TIMEOUT", "3s".into()),
        ],
    );
    eventually(WAIT, "the worker ready", || async {
        matches!(worker.get("/readyz").await, Some((200, _)))
    })
    .await;

    // Act: the operator deletes the vhost; the broker closes the connection and refuses every
    // reconnection.
    rabbitmqctl(&["delete_vhost", &names])
        .await
        .expect("delete_vhost");

    // Assert: the process gives up and says so with a failure status.
    let status = worker.exit_status(EXIT_LIMIT).await;
    assert!(!status.success(), "the worker exited with {status}");
    assert_eq!(
        worker
            .logged("Consuming stopped for good: RabbitMQ could not be reached again")
            .len(),
        1
    );
    drop(worker);
    drop(vhost);
    support::drop_schema(&names).await;
}
