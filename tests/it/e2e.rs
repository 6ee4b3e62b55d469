//! End to end on the real services: 3 workers (separate instances: own connections, pools and
//! lock clients) + the sandbox marketplace over HTTP; 300 postings over 2 marketplaces, each
//! published 3 times interleaved, ~20% ineligible, a handful of poison messages.
//! Every eligible posting must end with exactly one bid, ineligible none, poison parked, queues
//! drained, and the ledger must agree.

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bidorch::config::Settings;
use bidorch::ledger::{LedgerReports, LedgerState};
use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::publish::{OutgoingEvent, Publisher};
use bidorch::tally::Tally;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;

const POSTINGS: usize = 300;
const COPIES: usize = 3;
const TOKEN: &str = "e2e-token";

fn settings(sandbox: &str, names: &str) -> Settings {
    support::run_settings(
        names,
        sandbox,
        &[
            ("BIDORCH__AMQP__RETRY_TIERS", "100ms,500ms".into()),
            ("BIDORCH__AMQP__PREFETCH", "16".into()),
            ("BIDORCH__DATABASE__MAX_CONNECTIONS", "8".into()),
            ("BIDORCH__WORKER__RETRY_LOCK_HELD", "100ms".into()),
            ("BIDORCH__WORKER__RETRY_UNAVAILABLE", "500ms".into()),
            ("BIDORCH__WORKER__RETRY_TRANSIENT", "100ms".into()),
            ("BIDORCH__WORKER__SHUTDOWN_GRACE", "5s".into()),
            ("BIDORCH__BIDDING__MIN_BUDGET", "100".into()),
            ("BIDORCH__BIDDING__BLOCKED_KEYWORDS", "crypto".into()),
        ],
    )
}

/// 300 postings: every fifth ineligible (alternately under budget or with a blocked keyword).
fn postings() -> (Vec<Vec<u8>>, Vec<String>, Vec<String>) {
    let (mut bodies, mut eligible, mut ineligible) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..POSTINGS {
        let marketplace = if n % 2 == 0 { "upwork" } else { "freelancer" };
        let posting_id = format!("job_{n:04}");
        let (title, max) = match n % 10 {
            3 => ("Cheap logo", "50"),
            7 => ("A crypto bot", "900"),
            _ => ("Build a Rust worker", "1500.50"),
        };
        let key = format!("{marketplace}:{posting_id}");
        if matches!(n % 10, 3 | 7) {
            ineligible.push(key);
        } else {
            eligible.push(key);
        }
        bodies.push(
            serde_json::to_vec(&json!({
                "event_id": uuid::Uuid::new_v4().to_string(),
                "marketplace": marketplace,
                "posting_id": posting_id,
                "title": title,
                "budget": {"min": 10, "max": max, "currency": "USD", "kind": "fixed"},
            }))
            .unwrap(),
        );
    }
    (bodies, eligible, ineligible)
}

const POISON: &[&[u8]] = &[
    b"{not json",
    br#"{"event_id":"x1","marketplace":"upwork","title":"no posting id"}"#,
    br#"{"event_id":"x2","marketplace":"ebay","posting_id":"p","title":"unknown marketplace"}"#,
    br#"{"event_id":"x3","marketplace":"upwork","posting_id":"bad id","title":"t"}"#,
    br#"[1,2,3]"#,
];

async fn queue_depth(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(u32::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_bid_exactly_once_per_eligible_posting() {
    if !(support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await)
    {
        return;
    }
    // Arrange: the sandbox marketplace over real HTTP, NOT honouring idempotency keys: every
    // request it receives creates a bid, so "one bid each" proves the ledger, lease and fence
    // alone stopped every duplicate before the marketplace.
    let (sandbox, sandbox_url) = support::serve_sandbox(SandboxOptions {
        token: Some(TOKEN.to_owned()),
        honour_idempotency: false,
        ..SandboxOptions::default()
    })
    .await;
    let names = support::unique("e2e");
    let settings = settings(&sandbox_url, &names);

    // Three workers, each with its own connections.
    let tally = Arc::new(Tally::default());
    let (stop_workers, _) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    let mut first_ledger: Option<Arc<dyn LedgerReports>> = None;
    for i in 0..3 {
        let mut s = settings.clone();
        s.worker.instance_id = format!("{names}-w{i}");
        let system = support::worker_system(&s, TOKEN, Some(tally.clone())).await;
        first_ledger.get_or_insert_with(|| system.ports().reports.clone());
        let mut stop = stop_workers.subscribe();
        workers.push(tokio::spawn(async move {
            system
                .run_worker(false, async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await
        }));
    }
    let ledger = first_ledger.unwrap();

    // Act: publish every posting 3 times, interleaved, plus poison sent raw (our publisher
    // refuses invalid events, other publishers may not).
    let (bodies, eligible, ineligible) = postings();
    let publisher = Publisher::connect(&settings.amqp).await.unwrap();
    let mut events = Vec::new();
    for round in 0..COPIES {
        for i in 0..bodies.len() {
            // Rotate each round so the copies of one posting are far apart in the queue.
            let body = &bodies[(i + round * 97) % bodies.len()];
            events.push(OutgoingEvent::parse(body.clone()).unwrap());
        }
    }
    let started = Instant::now();
    for result in publisher.publish_many(&events).await {
        result.unwrap();
    }
    let conn = Connection::connect(&support::amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    for body in POISON {
        channel
            .basic_publish(
                settings.amqp.exchange.as_str().into(),
                "posting.upwork".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Wait (bounded) until every posting has a final ledger row and every queue is drained.
    let work_queue = settings.amqp.queue.clone();
    let dead_queue = settings.amqp.dead_letter_queue();
    let retry_queues: Vec<String> = settings
        .amqp
        .retry_tiers
        .iter()
        .map(|t| settings.amqp.retry_queue(*t))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = ledger.counts_by_state().await.expect("ledger counts");
        let finals: u64 = counts
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| n)
            .sum();
        let mut pending_msgs = queue_depth(&channel, &work_queue).await;
        for q in &retry_queues {
            pending_msgs += queue_depth(&channel, q).await;
        }
        let processed = tally.snapshot().processed();
        if finals == POSTINGS as u64
            && pending_msgs == 0
            && queue_depth(&channel, &dead_queue).await == POISON.len() as u32
            && processed >= (POSTINGS * COPIES + POISON.len()) as u64
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained in time: {finals} final rows, {pending_msgs} messages waiting, {processed} processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_workers.send(true);
    for w in workers {
        let report = w.await.expect("worker task").expect("worker ran");
        assert_eq!(report.abandoned, 0, "{report:?}");
    }

    // Assert: exactly one bid per eligible posting at the marketplace, none for the others.
    let stats = sandbox.stats();
    let bids_for = |key: &String| stats.postings.get(key).map_or(0, |p| p.bids);
    for key in &eligible {
        assert_eq!(bids_for(key), 1, "eligible {key}");
    }
    for key in &ineligible {
        assert_eq!(bids_for(key), 0, "ineligible {key}");
    }
    assert!(stats.duplicates.is_empty(), "{:?}", stats.duplicates);
    assert_eq!(stats.bids_created, eligible.len() as u64);
    // The ledger agrees.
    let counts: HashMap<LedgerState, u64> = ledger
        .counts_by_state()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(counts[&LedgerState::Placed], eligible.len() as u64);
    assert_eq!(counts[&LedgerState::Skipped], ineligible.len() as u64);
    assert_eq!(counts[&LedgerState::Pending], 0);
    // Poison parked with reasons, none bid.
    let c = tally.snapshot();
    assert_eq!(c.outcome("poison"), POISON.len() as u64);
    assert_eq!(c.placed_new, eligible.len() as u64);
    eprintln!(
        "e2e: {} postings ({} messages) in {:.2}s = {:.0} postings/s, {:.0} messages/s; bids {}, duplicates {}, replays {}, lock_held retries {}, ledger duplicates {}",
        POSTINGS,
        POSTINGS * COPIES + POISON.len(),
        elapsed.as_secs_f64(),
        POSTINGS as f64 / elapsed.as_secs_f64(),
        (POSTINGS * COPIES + POISON.len()) as f64 / elapsed.as_secs_f64(),
        stats.bids_created,
        stats.duplicates.len(),
        stats.replays,
        c.outcome("lock_held"),
        c.outcome("duplicate"),
    );

    // Clean up: queues, exchange, schema, keys.
    for q in retry_queues.iter().chain([&work_queue, &dead_queue]) {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            settings.amqp.exchange.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await;
    let _ = conn.close(200, "done".into()).await;
    support::drop_schema(&names).await;
    support::delete_redis_prefix(&format!("{names}:")).await;
}
