//! What a publisher controls cannot hurt the fleet, tested as the product is run (separate
//! `bidorch worker` processes, default configuration, the real broker): odd header names, a
//! forged `x-death`, dot-only ids and ids that need encoding in a URL; and a duplicate that finds
//! its twin's lease held is acked once the twin is done, however long the lease's TTL.

use crate::support;

use std::time::Duration;

use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::publish::OutgoingEvent;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use support::queue::{Inspector, eventually};
use support::scenario::{Load, Scenario};

fn event(posting_id: &str) -> Vec<u8> {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "marketplace": "upwork",
        "posting_id": posting_id,
        "title": "Odd input",
        "budget": {"min": 10, "max": "1200.00", "currency": "USD"},
    })
    .to_string()
    .into_bytes()
}

/// Headers a publisher may send: multi-byte names across byte 10 (they once crashed every
/// worker of the fleet), a forged `x-death` naming our wait queue, and a forged envelope.
fn odd_headers(queue: &str) -> FieldTable {
    let mut death = FieldTable::default();
    death.insert(
        "queue".into(),
        AMQPValue::LongString(format!("{queue}.retry.1s").into()),
    );
    death.insert("reason".into(), AMQPValue::LongString("expired".into()));
    let mut headers = FieldTable::default();
    headers.insert("x-bidorché".into(), AMQPValue::LongString("a".into()));
    headers.insert("éééééx".into(), AMQPValue::LongInt(1));
    headers.insert(
        "x-bidorch-é".into(),
        AMQPValue::ByteArray(vec![0xff].into()),
    );
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    headers.insert("x-bidorch-attempt".into(), AMQPValue::LongLongInt(99));
    headers
}

/// Ids that need care in a URL path yet are valid; each must reach the marketplace as itself.
const ODD_IDS: &[&str] = &[
    "...", ".a", "a.", "%2e%2e", "%2E", "a/b", "../x", "?q=1", "#frag", "a\\b", "a%2Fb", "~%",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn odd_headers_and_ids_crash_no_worker_and_every_valid_posting_is_bid_once() {
    let Some(mut scenario) = Scenario::start("pubin", SandboxOptions::default(), &[]).await else {
        return;
    };
    for name in ["a", "b"] {
        scenario.spawn_worker(name);
    }
    scenario.wait_ready().await;
    let inspector = Inspector::connect().await;
    let queue = scenario.settings.amqp.queue.clone();
    let exchange = scenario.settings.amqp.exchange.clone();
    let props = || {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(odd_headers(&queue))
    };

    // Act: valid postings (plain and odd ids) and poison (dot-only ids), all with odd headers.
    let mut eligible: Vec<String> = (0..6).map(|i| format!("upwork:plain_{i}")).collect();
    for i in 0..6 {
        let body = event(&format!("plain_{i}"));
        inspector
            .publish(&exchange, "posting.upwork", &body, props())
            .await;
    }
    for id in ODD_IDS {
        eligible.push(format!("upwork:{id}"));
        inspector
            .publish(&exchange, "posting.upwork", &event(id), props())
            .await;
    }
    for id in [".", ".."] {
        inspector
            .publish(&exchange, "posting.upwork", &event(id), props())
            .await;
    }
    let load = Load {
        events: Vec::<OutgoingEvent>::new(),
        eligible,
        ineligible: Vec::new(),
        poison: 2,
    };
    scenario.wait_settled(&load, Duration::from_secs(60)).await;

    // Assert: nobody crashed, each valid posting bid once as itself, the dot ids parked.
    for w in &scenario.workers {
        assert!(
            matches!(w.ready().await, Some((200, _))),
            "worker {} is still up",
            w.name
        );
    }
    let parked = inspector
        .drain(&scenario.settings.amqp.dead_letter_queue())
        .await;
    assert_eq!(parked.len(), 2, "the two dot-only ids are parked");
    for message in &parked {
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        assert_eq!(
            headers.inner().get("x-bidorch-reason"),
            Some(&AMQPValue::LongString("invalid_field".into())),
            "{headers:?}"
        );
    }
    let load = Load { poison: 0, ..load };
    scenario.assert_promise(&load).await;

    // `dlq replay --all` handles the odd headers too (it once panicked on them).
    let dead = scenario.settings.amqp.dead_letter_queue();
    inspector
        .publish(&exchange, "posting.upwork", &event(".."), props())
        .await;
    eventually(Duration::from_secs(30), "the poison parked", || async {
        inspector.ready(&dead).await == 1
    })
    .await;
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_bidorch"))
        .args(["dlq", "replay", "--all"])
        .env_clear()
        .envs(scenario.env_with(&[]))
        .output()
        .expect("bidorch dlq replay runs");
    assert!(
        replay.status.success(),
        "dlq replay: {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    eventually(
        Duration::from_secs(30),
        "the replayed poison parked again",
        || async { inspector.ready(&dead).await == 1 },
    )
    .await;
    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_finding_the_lease_held_is_acked_once_its_twin_is_done_whatever_the_ttl() {
    // A lease TTL far longer than this test may take: the duplicate must not sit it out.
    let ttl = [("BIDORCH__LOCK__TTL", "10m".to_owned())];
    // Each bid answer takes a while, so the twin finds the lease held.
    let sandbox = SandboxOptions {
        latency: Duration::from_millis(1500),
        ..SandboxOptions::default()
    };
    let Some(mut scenario) = Scenario::start("twin", sandbox, &ttl).await else {
        return;
    };
    for name in ["a", "b"] {
        scenario.spawn_worker(name);
    }
    scenario.wait_ready().await;
    let postings: Vec<String> = (0..4).map(|i| format!("twin_{i}")).collect();
    let mut events = Vec::new();
    for id in &postings {
        let body = String::from_utf8(event(id)).expect("JSON is UTF-8");
        let one = OutgoingEvent::parse(body).expect("valid event");
        events.push(one.clone());
        events.push(one);
    }
    let load = Load {
        events,
        eligible: postings.iter().map(|p| format!("upwork:{p}")).collect(),
        ineligible: Vec::new(),
        poison: 0,
    };

    scenario.publish(&load.events).await;

    scenario.wait_settled(&load, Duration::from_secs(90)).await;
    scenario.assert_promise(&load).await;
    let mut held = 0.0;
    for w in &scenario.workers {
        held += w
            .metric("bidorch_retries_total{reason=\"lock_held\"}")
            .await
            .unwrap_or(0.0);
    }
    assert!(held >= 1.0, "a twin found the lease held ({held} rechecks)");
    assert_eq!(
        scenario.sandbox.stats().requests,
        postings.len() as u64,
        "one marketplace call per posting"
    );
    scenario.stop().await;
}
