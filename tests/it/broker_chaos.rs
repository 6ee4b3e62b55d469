//! Broker chaos on real RabbitMQ, Redis and PostgreSQL: three in-process workers (each its own
//! connections, pools and lock client) process 1,000 postings, each published twice, and in the
//! middle of it the operator runs `rabbitmqctl close_all_connections`. Every eligible posting must
//! still end with exactly one bid (the sandbox does not honour idempotency keys, so a second
//! request would be a second bid), nothing is lost (every ledger row final, no message left ready
//! or unacked in any queue), and all three workers consume again afterwards: postings published
//! after the chaos are bid on too.
//!
//! `close_all_connections` acts on one virtual host, so the test runs in a vhost of its own and
//! closes only its own connections, never those of other tests or other users of the broker. It
//! collects log lines through the process's global subscriber (no other test installs one), so
//! it sees other tests' lines too and picks its workers' by their consumer tags.
//!
//! Needs `rabbitmqctl` (as root here; `$BIDORCH_RABBITMQCTL` may name another command, e.g.
//! `docker compose exec -T rabbitmq rabbitmqctl`); without it the test is skipped with a printed
//! reason, or fails when `BIDORCH_REQUIRE_SERVICES` is set.

use crate::support;
use support::rabbitmqctl::{Vhost, rabbitmqctl, unacked};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bidorch::config::Settings;
use bidorch::ledger::LedgerState;
use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::posting::PostingKey;
use bidorch::publish::{OutgoingEvent, Publisher};
use bidorch::tally::Tally;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use support::queue::eventually;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

const TOKEN: &str = "chaos-token";
const WORKERS: usize = 3;
const POSTINGS: usize = 1000;
const AFTER_CHAOS: usize = 10;
/// Messages published before the chaos; the rest (second copies included) after it, so the
/// workers must have recovered to finish.
const BEFORE_CHAOS: usize = 1400;
const WAIT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// What the workers log, to time their recovery.

/// The workers' log events (message and string fields) with the instant each was emitted.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Logged>>>);

/// One log event: when, and its fields (`message` included).
type Logged = (Instant, BTreeMap<String, String>);

impl Events {
    fn since(&self, t: Instant) -> Vec<Logged> {
        let all = self.0.lock().unwrap();
        all.iter().filter(|(at, _)| *at >= t).cloned().collect()
    }
}

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push((Instant::now(), fields.0));
    }
}

// ---------------------------------------------------------------------------------------------

fn settings(amqp_url: &str, sandbox: &str, names: &str) -> Settings {
    support::run_settings(
        names,
        sandbox,
        &[
            ("AMQP_URL", amqp_url.to_owned()),
            ("BIDORCH__AMQP__PREFETCH", "8".into()),
            ("BIDORCH__WORKER__SHUTDOWN_GRACE", "10s".into()),
            ("BIDORCH__BIDDING__MIN_BUDGET", "100".into()),
        ],
    )
}

/// `count` postings from number `first`; every tenth under the minimum budget.
fn postings(first: usize, count: usize) -> Vec<(String, bool, OutgoingEvent)> {
    (first..first + count)
        .map(|n| {
            let marketplace = if n % 2 == 0 { "upwork" } else { "freelancer" };
            let posting_id = format!("chaos_{n:05}");
            let eligible = n % 10 != 9;
            let body = json!({
                "event_id": uuid::Uuid::new_v4().to_string(),
                "marketplace": marketplace,
                "posting_id": posting_id,
                "title": "Survive a broker hiccup",
                "budget": {"min": 10, "max": if eligible { "900" } else { "20" }, "currency": "USD"},
            });
            (
                format!("{marketplace}:{posting_id}"),
                eligible,
                OutgoingEvent::parse(body.to_string()).expect("valid event"),
            )
        })
        .collect()
}

/// The N of `rabbitmqctl close_all_connections`'s "Closed N connections".
fn closed_count(said: &str) -> u32 {
    said.lines()
        .find_map(|l| l.strip_prefix("Closed "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("rabbitmqctl says how many it closed: {said}"))
}

/// Takes (and acks) every ready message of `queue`; their bodies.
async fn take_all(amqp_url: &str, queue: &str) -> Vec<Vec<u8>> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .expect("inspection connection");
    let channel = connection.create_channel().await.expect("channel");
    let mut bodies = Vec::new();
    while let Some(m) = channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic_get")
    {
        bodies.push(m.delivery.data);
    }
    let _ = connection.close(200, "OK".into()).await;
    bodies
}

/// (ready messages, consumers) of `queue`, on a fresh connection (the chaos closes old ones).
async fn queue_state(amqp_url: &str, queue: &str) -> (u32, u32) {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .expect("inspection connection");
    let channel = connection.create_channel().await.expect("channel");
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let _ = connection.close(200, "OK".into()).await;
    (q.message_count(), q.consumer_count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_every_broker_connection_mid_run_loses_nothing_and_bids_once() {
    if !(support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await)
    {
        return;
    }
    let names = support::unique("chaos");
    let mut amqp_url = url::Url::parse(&support::amqp_url()).expect("AMQP_URL parses");
    let Some(vhost) = Vhost::create(&names).await else {
        return;
    };
    amqp_url.set_path(&format!("/{}", vhost.name));
    let amqp_url = amqp_url.to_string();
    let events = Events::default();
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(events.clone())
        .try_init()
        .expect("the only test in this binary installs the subscriber");

    // Arrange: a naive sandbox answering after 100ms (so each worker always has bids in flight);
    // the ledger schema and topology made up front; three workers with their own connections.
    let (sandbox, sandbox_url) = support::serve_sandbox(SandboxOptions {
        token: Some(TOKEN.to_owned()),
        honour_idempotency: false,
        latency: Duration::from_millis(100),
        ..SandboxOptions::default()
    })
    .await;
    let settings = settings(&amqp_url, &sandbox_url, &names);
    let ledger = bidorch::app::ledger(&settings.database).await.unwrap();
    support::queue::declare_topology(&settings.amqp).await;
    let tally = Arc::new(Tally::default());
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    let mut tags = BTreeSet::new();
    for i in 0..WORKERS {
        let mut s = settings.clone();
        s.worker.instance_id = format!("{names}-w{i}");
        tags.insert(s.instance_id());
        let system = support::worker_system(&s, TOKEN, Some(tally.clone())).await;
        let mut stopped = stop.subscribe();
        workers.push(tokio::spawn(async move {
            system
                .run_worker(false, async move {
                    let _ = stopped.wait_for(|v| *v).await;
                })
                .await
        }));
    }
    eventually(WAIT, "all workers consuming", || async {
        queue_state(&amqp_url, &settings.amqp.queue).await.1 == WORKERS as u32
    })
    .await;

    // Every posting twice, the second copy ~150 messages after the first.
    let all = postings(0, POSTINGS);
    let mut order: Vec<usize> = Vec::new();
    for n in 0..POSTINGS + 150 {
        if n < POSTINGS {
            order.push(n);
        }
        if n >= 150 {
            order.push(n - 150);
        }
    }
    let messages: Vec<OutgoingEvent> = order.iter().map(|&n| all[n].2.clone()).collect();
    let publisher = Publisher::connect(&settings.amqp).await.unwrap();

    // Act: publish the first part, and once bids flow close every connection of the vhost.
    let started = Instant::now();
    for r in publisher.publish_many(&messages[..BEFORE_CHAOS]).await {
        r.expect("published");
    }
    eventually(WAIT, "bids flowing", || async {
        sandbox.stats().bids_created >= 30
    })
    .await;
    let bids_before = sandbox.stats().bids_created;
    let chaos_started = Instant::now();
    let said = rabbitmqctl(&[
        "close_all_connections",
        "--vhost",
        &vhost.name,
        "chaos test",
    ])
    .await
    .expect("close_all_connections");
    let closed = closed_count(&said);
    let bids_at_close = sandbox.stats().bids_created;
    // One connection per worker, plus the publisher's.
    assert!(
        closed > WORKERS as u32,
        "closed {closed} connections: {said}"
    );

    // Every worker notices, reconnects and consumes again.
    eventually(WAIT, "every worker consuming again", || {
        let (events, tags) = (events.clone(), tags.clone());
        async move {
            let back: BTreeSet<String> = events
                .since(chaos_started)
                .into_iter()
                .filter(|(_, f)| {
                    f.get("message").map(String::as_str) == Some("Consuming from RabbitMQ")
                })
                .filter_map(|(_, f)| f.get("consumer_tag").cloned())
                .collect();
            tags.is_subset(&back)
        }
    })
    .await;
    let after = events.since(chaos_started);
    let first_loss = after
        .iter()
        .find(|(_, f)| {
            f.get("message")
                .is_some_and(|m| m.starts_with("Consuming stopped"))
        })
        .map(|(at, _)| *at)
        .expect("the workers noticed the lost connections");
    let all_back = after
        .iter()
        .filter(|(_, f)| f.get("message").map(String::as_str) == Some("Consuming from RabbitMQ"))
        .filter(|(_, f)| f.get("consumer_tag").is_some_and(|t| tags.contains(t)))
        .map(|(at, _)| *at)
        .max()
        .expect("reconnections logged");
    let recovery = all_back.duration_since(first_loss);
    let settle_failures = after
        .iter()
        .filter(|(_, f)| {
            f.get("message")
                .is_some_and(|m| m.starts_with("Settling the message failed"))
        })
        .count();

    // The rest (the second copies included) goes out on the same publisher, which reconnects.
    for r in publisher.publish_many(&messages[BEFORE_CHAOS..]).await {
        r.expect("published after the chaos");
    }
    // Every posting final and nothing waiting in the work or wait queues.
    let vhost_name = vhost.name.as_str();
    let drained = |postings: usize| {
        let (amqp_url, settings, ledger) = (&amqp_url, &settings, &ledger);
        async move {
            let (ready, _) = queue_state(amqp_url, &settings.amqp.queue).await;
            let mut waiting = ready;
            for tier in &settings.amqp.retry_tiers {
                waiting += queue_state(amqp_url, &settings.amqp.retry_queue(*tier))
                    .await
                    .0;
            }
            if support::final_rows(&*ledger.reports).await != postings as u64 || waiting != 0 {
                return false;
            }
            // Nothing in flight either: a duplicate that met a lease still held goes back to
            // wait after every row is final, and would be left in a wait queue at the stop.
            unacked(vhost_name, &settings.amqp.queue).await == 0
        }
    };
    eventually(WAIT, "every posting final and the queues drained", || {
        drained(POSTINGS)
    })
    .await;
    let elapsed = started.elapsed();

    // Still consuming afterwards: exactly the three workers subscribed (no zombie consumer from
    // a half-opened reconnection), and new postings get their bid.
    assert_eq!(
        queue_state(&amqp_url, &settings.amqp.queue).await.1,
        WORKERS as u32,
        "consumers on the work queue after the chaos"
    );
    let listed = rabbitmqctl(&[
        "list_connections",
        "-p",
        &vhost.name,
        "--quiet",
        "--no-table-headers",
        "client_properties",
    ])
    .await
    .expect("list_connections");
    for tag in &tags {
        let name = format!("{{\"connection_name\",\"bidorch-{tag}\"}}");
        assert_eq!(
            listed.matches(&name).count(),
            1,
            "open connections of worker {tag} after the chaos"
        );
    }
    let late = postings(POSTINGS, AFTER_CHAOS);
    let late_events: Vec<OutgoingEvent> = late.iter().map(|p| p.2.clone()).collect();
    for r in publisher.publish_many(&late_events).await {
        r.expect("published after recovery");
    }
    eventually(
        WAIT,
        "the late postings final and the queues drained",
        || drained(POSTINGS + AFTER_CHAOS),
    )
    .await;
    publisher.close().await;
    let _ = stop.send(true);
    for w in workers {
        let report = w.await.unwrap().expect("worker ran");
        assert_eq!(report.abandoned, 0, "{report:?}");
        assert!(
            !report.source_ended,
            "a worker's source gave up: {report:?}"
        );
    }
    // No consumer outlives its worker.
    eventually(
        WAIT,
        "no consumer left after the workers stopped",
        || async { queue_state(&amqp_url, &settings.amqp.queue).await.1 == 0 },
    )
    .await;
    // Any connection still open goes now, so whatever it held unacked is ready again and counted
    // below (`list_queues` figures of quorum queues lag; a passive declare is exact).
    let left_open = closed_count(
        &rabbitmqctl(&[
            "close_all_connections",
            "--vhost",
            &vhost.name,
            "chaos test done",
        ])
        .await
        .expect("close_all_connections"),
    );

    // Assert: exactly one bid per eligible posting, none for the others, the ledger agrees, and
    // no message is left anywhere.
    let stats = sandbox.stats();
    assert!(
        stats.duplicates.is_empty(),
        "duplicates: {:?}",
        stats.duplicates
    );
    let (mut eligible, mut ineligible) = (0u64, 0u64);
    for (key, is_eligible, _) in all.iter().chain(&late) {
        let bids = stats.postings.get(key).map_or(0, |p| p.bids);
        if *is_eligible {
            eligible += 1;
            assert_eq!(bids, 1, "{key}");
        } else {
            ineligible += 1;
            assert_eq!(bids, 0, "{key}");
        }
    }
    assert_eq!(stats.bids_created, eligible);
    let counts: BTreeMap<LedgerState, u64> = ledger
        .reports
        .counts_by_state()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(counts.get(&LedgerState::Placed).copied(), Some(eligible));
    assert_eq!(counts.get(&LedgerState::Skipped).copied(), Some(ineligible));
    assert_eq!(counts.get(&LedgerState::Pending).copied().unwrap_or(0), 0);
    let mut queues = vec![
        settings.amqp.queue.clone(),
        settings.amqp.dead_letter_queue(),
    ];
    queues.extend(
        settings
            .amqp
            .retry_tiers
            .iter()
            .map(|t| settings.amqp.retry_queue(*t)),
    );
    let dead = settings.amqp.dead_letter_queue();
    let mut left_waiting = 0;
    for queue in &queues {
        let (messages, consumers) = queue_state(&amqp_url, queue).await;
        assert_eq!(consumers, 0, "queue {queue}: consumers after the stop");
        if *queue == dead {
            assert_eq!(messages, 0, "nothing parked");
            continue;
        }
        // Every posting is final (above), so a message still waiting can only be a copy that
        // was in flight when the run was judged drained (the broker's figures lag a little):
        // check that each one is, and lose nothing.
        for body in take_all(&amqp_url, queue).await {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("a posting event");
            let key = PostingKey::new(
                v["marketplace"].as_str().unwrap_or(""),
                v["posting_id"].as_str().unwrap_or(""),
            )
            .expect("a posting key");
            let row = ledger.ledger.lookup(&key).await.unwrap().expect("a row");
            assert!(row.state.is_final(), "{key} waits without a final row");
            left_waiting += 1;
        }
    }
    let c = tally.snapshot();
    eprintln!(
        "chaos: {POSTINGS} postings ({} messages) through {WORKERS} workers in {:.2}s = {:.0} postings/s, {:.0} messages/s \
         (sandbox latency 100ms, prefetch 8); close_all_connections closed {closed} connections after {bids_before}..{bids_at_close} bids; \
         all workers consuming again {:.0}ms after the first noticed; {settle_failures} settlements lost with the connections (redelivered); \
         bids {}, duplicates 0, ledger duplicates {}, lock_held retries {}; {AFTER_CHAOS} postings after recovery bid; \
         {left_open} connection(s) still open after stop, {left_waiting} duplicate copies left waiting",
        messages.len(),
        elapsed.as_secs_f64(),
        POSTINGS as f64 / elapsed.as_secs_f64(),
        messages.len() as f64 / elapsed.as_secs_f64(),
        recovery.as_secs_f64() * 1000.0,
        stats.bids_created,
        c.outcome("duplicate"),
        c.outcome("lock_held"),
    );

    support::drop_schema(&names).await;
    support::delete_redis_prefix(&format!("{names}:")).await;
    drop(vhost);
}
