//! The parking-lot tooling against a real broker: `dlq list` peeks without losing or reordering,
//! `dlq replay` republishes with attempts reset, and the delivery-limit → park → replay round trip.

use crate::support;

use std::time::Duration;

use bidorch::config::AmqpSettings;
use bidorch::dlq::{self, REPLAYED_REASON_HEADER, ReplayFilter};
use bidorch::source::AmqpPostingSource;
use lapin::BasicProperties;
use support::queue::{Cleanup, Inspector, posting, settings};

const WAIT: Duration = Duration::from_secs(15);
/// The default `ledger.retention`.
const RETENTION: Duration = Duration::from_secs(90 * 86_400);

async fn next(source: &mut AmqpPostingSource) -> bidorch::source::Delivery {
    support::queue::next_within(WAIT, source).await
}

/// Publishes `ids` as postings with `x-bidorch-attempt: attempt`, and parks each one through the
/// source with reason `reason-{id}`.
async fn park(
    s: &AmqpSettings,
    source: &mut AmqpPostingSource,
    inspector: &Inspector,
    ids: &[&str],
    attempt: i64,
) {
    for id in ids {
        let props = BasicProperties::default().with_message_id((*id).into());
        inspector
            .publish(
                &s.exchange,
                "posting.upwork",
                &posting(id, "upwork", id),
                props,
            )
            .await;
        // Failed `attempt - 1` times for real: through the wait queue, attempt counted each time
        // (a publisher's own `x-bidorch-attempt` would not be trusted).
        let mut d = next(source).await;
        for _ in 1..attempt {
            d.retry(Duration::ZERO, "marketplace_transient", true)
                .await
                .unwrap();
            d = next(source).await;
        }
        assert_eq!(d.message_id.as_deref(), Some(*id));
        assert_eq!(i64::from(d.attempt), attempt);
        d.dead_letter(&format!("reason-{id}"), "why").await.unwrap();
    }
}

#[tokio::test]
async fn list_peeks_with_reasons_without_losing_or_reordering() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "dlq-list").await.unwrap();
    let inspector = Inspector::connect().await;
    let ids = ["e1", "e2", "e3", "e4", "e5"];
    park(&s, &mut source, &inspector, &ids, 4).await;
    source.close().await.unwrap();

    let listing = dlq::list(&s, 10).await.unwrap();
    assert_eq!(listing.total, 5);
    let seen: Vec<_> = listing
        .messages
        .iter()
        .map(|m| (m.event_id.clone().unwrap(), m.reason.clone(), m.attempt))
        .collect();
    let expected: Vec<_> = ids
        .iter()
        .map(|id| (id.to_string(), format!("reason-{id}"), 4))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(listing.messages[0].detail.as_deref(), Some("why"));

    // Peeking again, and partially, sees the same order: nothing was consumed or moved.
    for _ in 0..3 {
        let partial = dlq::list(&s, 2).await.unwrap();
        let first: Vec<_> = partial
            .messages
            .iter()
            .map(|m| m.event_id.clone().unwrap())
            .collect();
        assert_eq!(first, vec!["e1", "e2"]);
    }
    let drained: Vec<_> = inspector
        .drain(&s.dead_letter_queue())
        .await
        .into_iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .clone()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(drained, ids);
}

#[tokio::test]
async fn replay_by_event_id_republishes_only_that_one_with_attempts_reset() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "dlq-one").await.unwrap();
    let inspector = Inspector::connect().await;
    park(&s, &mut source, &inspector, &["r1", "r2", "r3"], 7).await;

    let summary = dlq::replay(&s, &ReplayFilter::EventId("r2".into()), RETENTION)
        .await
        .unwrap();
    assert_eq!(summary.replayed, vec!["r2"]);
    assert_eq!(summary.kept, 2);

    let back = next(&mut source).await;
    assert_eq!(back.message_id.as_deref(), Some("r2"));
    assert_eq!(back.body, posting("r2", "upwork", "r2"));
    assert_eq!(back.attempt, 1, "attempts reset");
    assert_eq!(back.headers[REPLAYED_REASON_HEADER], "reason-r2");
    assert!(!back.headers.contains_key("x-bidorch-reason"));
    back.ack().await.unwrap();
    source.close().await.unwrap();

    let left = dlq::list(&s, 10).await.unwrap();
    let ids: Vec<_> = left
        .messages
        .iter()
        .map(|m| m.event_id.clone().unwrap())
        .collect();
    assert_eq!(ids, vec!["r1", "r3"]);
}

#[tokio::test]
async fn replay_all_empties_the_parking_lot_once_even_if_messages_are_parked_again() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "dlq-all").await.unwrap();
    let inspector = Inspector::connect().await;
    park(&s, &mut source, &inspector, &["a1", "a2", "a3"], 2).await;

    // A worker that parks everything again while the replay runs: the replay must still end.
    let reparker = tokio::spawn(async move {
        for _ in 0..3 {
            let d = next(&mut source).await;
            assert_eq!(d.attempt, 1);
            d.dead_letter("still_broken", "again").await.unwrap();
        }
        source
    });
    let summary = dlq::replay(&s, &ReplayFilter::All, RETENTION)
        .await
        .unwrap();
    assert_eq!(summary.replayed, vec!["a1", "a2", "a3"]);
    let source = reparker.await.unwrap();
    source.close().await.unwrap();

    let listing = dlq::list(&s, 10).await.unwrap();
    assert_eq!(listing.total, 3);
    assert!(listing.messages.iter().all(|m| m.reason == "still_broken"));
}

#[tokio::test]
async fn a_message_parked_at_the_delivery_limit_can_be_replayed() {
    if !support::amqp_available().await {
        return;
    }
    let mut s = settings();
    s.delivery_limit = 1;
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "dlq-limit").await.unwrap();
    let inspector = Inspector::connect().await;
    inspector
        .publish(
            &s.exchange,
            "posting.upwork",
            &posting("crash", "upwork", "c"),
            BasicProperties::default().with_message_id("crash".into()),
        )
        .await;
    // Delivered twice, dropped unsettled both times (a crashing handler): the broker parks it.
    for _ in 0..2 {
        drop(next(&mut source).await);
    }
    let mut listing = dlq::list(&s, 10).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while listing.total == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        listing = dlq::list(&s, 10).await.unwrap();
    }
    assert_eq!(listing.messages.len(), 1);
    assert_eq!(listing.messages[0].reason, "delivery_limit");
    assert_eq!(listing.messages[0].event_id.as_deref(), Some("crash"));

    let summary = dlq::replay(&s, &ReplayFilter::All, RETENTION)
        .await
        .unwrap();
    assert_eq!(summary.replayed, vec!["crash"]);
    let back = next(&mut source).await;
    assert_eq!(back.message_id.as_deref(), Some("crash"));
    assert_eq!(back.attempt, 1);
    assert!(!back.redelivered);
    assert!(!back.headers.contains_key("x-death"), "a fresh journey");
    back.ack().await.unwrap();
    source.close().await.unwrap();
    assert_eq!(dlq::list(&s, 10).await.unwrap().total, 0);
}

#[tokio::test]
async fn replaying_an_event_id_that_is_not_parked_fails_naming_it() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "dlq-unknown").await.unwrap();
    let inspector = Inspector::connect().await;
    park(&s, &mut source, &inspector, &["known"], 1).await;
    source.close().await.unwrap();

    let output = tokio::task::spawn_blocking({
        let (exchange, queue) = (s.exchange.clone(), s.queue.clone());
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_bidorch"))
                .args(["dlq", "replay", "--event-id", "UNKNOWN"])
                .env_clear()
                .env("AMQP_URL", support::amqp_url())
                .env("BIDORCH__AMQP__EXCHANGE", exchange)
                .env("BIDORCH__AMQP__QUEUE", queue)
                .output()
                .expect("bidorch runs")
        }
    })
    .await
    .expect("join");

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("no such message") && err.contains("UNKNOWN"),
        "{err}"
    );
    let left = dlq::list(&s, 10).await.unwrap();
    assert_eq!(left.total, 1, "the parked message stays");
}

/// `dlq replay` leaves a message bidorch first saw longer ago than `ledger.retention` parked
/// and says so (its ledger row may be pruned); one parked now carries when it was first seen
/// and is replayed.
#[tokio::test]
async fn replay_leaves_messages_older_than_the_retention_parked() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "dlq-old").await.unwrap();
    let inspector = Inspector::connect().await;
    park(&s, &mut source, &inspector, &["fresh"], 1).await;
    // As a worker parked it 100 days ago.
    let hundred_days_ago = chrono::Utc::now() - chrono::Duration::days(100);
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-bidorch-first-seen".into(),
        lapin::types::AMQPValue::LongLongInt(hundred_days_ago.timestamp_millis()),
    );
    headers.insert(
        "x-bidorch-reason".into(),
        lapin::types::AMQPValue::LongString("marketplace_unavailable".into()),
    );
    inspector
        .publish(
            "",
            &s.dead_letter_queue(),
            &posting("ancient", "upwork", "ancient"),
            BasicProperties::default()
                .with_message_id("ancient".into())
                .with_headers(headers),
        )
        .await;
    let listing = dlq::list(&s, 10).await.unwrap();
    assert_eq!(listing.total, 2);
    let fresh = listing.messages[0].first_seen.expect("parking records it");
    assert!(
        chrono::Utc::now() - fresh < chrono::Duration::minutes(5),
        "{fresh}"
    );

    let summary = dlq::replay(&s, &ReplayFilter::All, RETENTION)
        .await
        .unwrap();
    assert_eq!(summary.replayed, vec!["fresh"]);
    assert_eq!(summary.beyond_retention, vec!["ancient"]);
    assert_eq!(summary.kept, 1);
    let back = next(&mut source).await;
    assert_eq!(back.message_id.as_deref(), Some("fresh"));
    back.ack().await.unwrap();
    source.close().await.unwrap();
    let left = dlq::list(&s, 10).await.unwrap();
    assert_eq!(left.total, 1);
    assert_eq!(left.messages[0].event_id.as_deref(), Some("ancient"));
}
