//! The RabbitMQ source against a real broker: topology, round trip, retry through the wait queue,
//! dead-lettering, the delivery-limit backstop, nothing lost, and reconnection.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use bidorch::amqp::topology;
use bidorch::config::AmqpSettings;
use bidorch::source::{
    AmqpPostingSource, ConsumerState, DETAIL_HEADER, PostingSource, REASON_HEADER, SourceError,
};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use support::queue::{Cleanup, Inspector, posting, settings};

const WAIT: Duration = Duration::from_secs(15);

async fn next(source: &mut AmqpPostingSource) -> bidorch::source::Delivery {
    support::queue::next_within(WAIT, source).await
}

fn props(message_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    );
    BasicProperties::default()
        .with_message_id(message_id.into())
        .with_content_type("application/json".into())
        .with_headers(headers)
}

fn header(msg: &lapin::message::Delivery, name: &str) -> Option<String> {
    msg.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name).cloned())
        .map(|v| match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::LongLongInt(n) => n.to_string(),
            other => format!("{other:?}"),
        })
}

#[tokio::test]
async fn topology_declares_every_queue_and_redeclaring_is_idempotent() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let inspector = Inspector::connect().await;

    // Declared by connect, then again by a second source and twice more by hand.
    let first = AmqpPostingSource::connect(&s, "a")
        .await
        .expect("first connect");
    let second = AmqpPostingSource::connect(&s, "b")
        .await
        .expect("second connect");
    topology::declare(&inspector.channel, &s)
        .await
        .expect("third declare");
    topology::declare(&inspector.channel, &s)
        .await
        .expect("fourth declare");

    for spec in topology::queues(&s) {
        assert!(inspector.exists(&spec.name).await, "{} exists", spec.name);
    }
    assert!(
        inspector
            .exists(&s.retry_queue(Duration::from_millis(200)))
            .await
    );
    assert!(
        inspector
            .exists(&s.retry_queue(Duration::from_secs(1)))
            .await
    );
    assert!(inspector.exists(&s.dead_letter_queue()).await);

    first.close().await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test]
async fn conflicting_arguments_are_a_topology_error_naming_the_queue() {
    if !support::amqp_available().await {
        return;
    }
    let mut s = settings();
    let _cleanup = Cleanup(s.clone());
    let inspector = Inspector::connect().await;
    topology::declare(&inspector.channel, &s).await.unwrap();

    s.delivery_limit += 1;
    let err = AmqpPostingSource::connect(&s, "c").await.unwrap_err();
    assert!(matches!(err, SourceError::Topology(_)), "{err}");
    assert!(err.to_string().contains(&s.queue), "{err}");
}

#[tokio::test]
async fn publish_consume_ack_round_trip() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "rt").await.unwrap();
    let inspector = Inspector::connect().await;
    let body = posting("ev-1", "upwork", "job-1");
    inspector
        .publish(&s.exchange, "posting.upwork", &body, props("ev-1"))
        .await;

    let delivery = next(&mut source).await;
    assert_eq!(delivery.body, body);
    assert_eq!(delivery.attempt, 1);
    assert!(!delivery.redelivered);
    assert_eq!(delivery.message_id.as_deref(), Some("ev-1"));
    assert!(delivery.headers["traceparent"].starts_with("00-4bf92f35"));
    delivery.ack().await.expect("ack is confirmed sent");
    source.close().await.unwrap();

    // Had the ack not happened, closing would have requeued ev-1 ahead of the marker.
    inspector
        .publish(&s.exchange, "posting.upwork", b"marker", props("marker"))
        .await;
    let first = inspector.take_eventually(&s.queue, WAIT).await;
    assert_eq!(first.delivery.data, b"marker");
    assert_eq!(inspector.ready(&s.queue).await, 0);
}

#[tokio::test]
async fn a_publishers_own_bidorch_headers_are_not_trusted() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "forged").await.unwrap();
    let inspector = Inspector::connect().await;
    // A publisher claiming attempt 99, a not-before far ahead and an old first-seen, in any case.
    let mut headers = FieldTable::default();
    headers.insert("X-Bidorch-Attempt".into(), AMQPValue::LongLongInt(99));
    headers.insert(
        "x-bidorch-not-before".into(),
        AMQPValue::LongString("99999999999999".into()),
    );
    headers.insert(
        "x-bidorch-first-seen".into(),
        AMQPValue::LongString("1".into()),
    );
    headers.insert(
        "x-bidorch-reason".into(),
        AMQPValue::LongString("forged".into()),
    );
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    );
    let props = BasicProperties::default()
        .with_message_id("ev-forged".into())
        .with_headers(headers);
    inspector
        .publish(
            &s.exchange,
            "posting.upwork",
            &posting("ev-forged", "upwork", "forged"),
            props,
        )
        .await;

    let d = next(&mut source).await;

    assert_eq!(d.attempt, 1);
    assert_eq!(d.not_before, None);
    assert!(d.first_seen.elapsed().unwrap_or_default() < Duration::from_secs(60));
    assert!(
        !d.headers.keys().any(|k| bidorch::source::is_own_header(k)),
        "{:?}",
        d.headers
    );
    assert!(d.headers.contains_key("traceparent"), "other headers stay");
    // Its copy carries only ours: back through the wait queue it is trusted, attempt counted.
    d.retry(Duration::ZERO, "marketplace_transient", true)
        .await
        .unwrap();
    let again = next(&mut source).await;
    assert_eq!(again.attempt, 2);
    assert_eq!(again.headers[REASON_HEADER], "marketplace_transient");
    again.ack().await.unwrap();
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_publishers_forged_x_death_does_not_make_its_bidorch_headers_trusted() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "forged-death")
        .await
        .unwrap();
    let inspector = Inspector::connect().await;
    // What a hop through our own 1 s wait queue writes, forged by the publisher.
    let mut death = FieldTable::default();
    death.insert(
        "queue".into(),
        AMQPValue::LongString(format!("{}.retry.1s", s.queue).into()),
    );
    death.insert("reason".into(), AMQPValue::LongString("expired".into()));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    headers.insert("x-bidorch-attempt".into(), AMQPValue::LongLongInt(99));
    headers.insert(
        "x-bidorch-first-seen".into(),
        AMQPValue::LongString("1".into()),
    );
    headers.insert(
        "x-bidorch-reason".into(),
        AMQPValue::LongString("forged".into()),
    );
    // And a header name with a multi-byte character across byte 10 (it once crashed workers).
    headers.insert("x-bidorché".into(), AMQPValue::LongString("odd".into()));
    let props = BasicProperties::default()
        .with_message_id("ev-forged-death".into())
        .with_headers(headers);
    inspector
        .publish(
            &s.exchange,
            "posting.upwork",
            &posting("ev-forged-death", "upwork", "forged"),
            props,
        )
        .await;

    let d = next(&mut source).await;

    assert_eq!(d.attempt, 1, "the forged attempt is not trusted");
    assert!(d.first_seen.elapsed().unwrap_or_default() < Duration::from_secs(60));
    assert!(
        !d.headers.keys().any(|k| bidorch::source::is_own_header(k)),
        "{:?}",
        d.headers
    );
    assert_eq!(
        d.headers["x-bidorché"], "odd",
        "odd header names ride along"
    );
    d.ack().await.unwrap();
    source.close().await.unwrap();
}

#[tokio::test]
async fn retry_goes_through_the_wait_queue_and_comes_back_with_the_next_attempt() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "retry").await.unwrap();
    let inspector = Inspector::connect().await;
    let body = posting("ev-2", "upwork", "job-2");
    inspector
        .publish(&s.exchange, "posting.upwork", &body, props("ev-2"))
        .await;

    let first = next(&mut source).await;
    assert_eq!(first.attempt, 1);
    first
        .retry(Duration::from_millis(150), "lock_held", true)
        .await
        .expect("retry confirmed");

    let again = next(&mut source).await;
    assert_eq!(again.body, body);
    assert_eq!(again.attempt, 2);
    assert_eq!(again.message_id.as_deref(), Some("ev-2"));
    assert_eq!(again.headers[REASON_HEADER], "lock_held");
    assert!(again.headers["traceparent"].starts_with("00-4bf92f35"));
    // The broker's own record: it expired out of the 200ms wait queue (smallest tier >= 150ms).
    let wait_queue = s.retry_queue(Duration::from_millis(200));
    assert_eq!(again.headers["x-death"], format!("{wait_queue}/expired/1"));

    // A longer delay waits in the largest tier not longer than it, and says when it is over;
    // a wait that is not the posting's failure keeps the attempt.
    let asked = std::time::SystemTime::now();
    again
        .retry(Duration::from_millis(1500), "lock_held", false)
        .await
        .unwrap();
    let third = next(&mut source).await;
    assert_eq!(third.attempt, 2);
    assert_eq!(
        third.headers["x-death"],
        format!("{}/expired/1", s.retry_queue(Duration::from_secs(1)))
    );
    let not_before = third.not_before.expect("a not-before header");
    let waited = not_before.duration_since(asked).unwrap();
    // Stored in whole milliseconds.
    assert!(waited >= Duration::from_millis(1499), "{waited:?}");
    assert!(
        third.first_seen <= asked,
        "the retry budget runs from the first delivery"
    );
    third.ack().await.unwrap();

    source.close().await.unwrap();
}

#[tokio::test]
async fn dead_letter_parks_the_message_with_its_reason() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "dl").await.unwrap();
    let inspector = Inspector::connect().await;
    inspector
        .publish(
            &s.exchange,
            "posting.upwork",
            b"{not json",
            props("poison-1"),
        )
        .await;

    let delivery = next(&mut source).await;
    delivery
        .dead_letter("invalid_json", "expected value at line 1 column 2")
        .await
        .expect("parked");

    let parked = inspector
        .take_eventually(&s.dead_letter_queue(), WAIT)
        .await
        .delivery;
    assert_eq!(parked.data, b"{not json");
    assert_eq!(
        header(&parked, REASON_HEADER).as_deref(),
        Some("invalid_json")
    );
    assert_eq!(
        header(&parked, DETAIL_HEADER).as_deref(),
        Some("expected value at line 1 column 2")
    );
    assert_eq!(header(&parked, "x-bidorch-attempt").as_deref(), Some("1"));
    assert_eq!(
        parked.properties.message_id().as_ref().map(|m| m.as_str()),
        Some("poison-1")
    );
    source.close().await.unwrap();
    assert_eq!(inspector.ready(&s.queue).await, 0);
}

#[tokio::test]
async fn a_message_that_keeps_coming_back_unsettled_is_parked_at_the_delivery_limit() {
    if !support::amqp_available().await {
        return;
    }
    let mut s = settings();
    s.delivery_limit = 2;
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "limit").await.unwrap();
    let inspector = Inspector::connect().await;
    inspector
        .publish(
            &s.exchange,
            "posting.upwork",
            b"crashes workers",
            props("crash-1"),
        )
        .await;

    // Dropped unsettled, as when the handler panics: handed back each time, then parked.
    let mut deliveries = 0;
    let mut parked = None;
    while parked.is_none() {
        if let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(300), source.next()).await
        {
            deliveries += 1;
            assert!(deliveries <= 3, "delivered beyond the limit");
            drop(d);
        }
        parked = inspector.take(&s.dead_letter_queue()).await;
    }
    let parked = parked.unwrap().delivery;
    assert_eq!(parked.data, b"crashes workers");
    assert_eq!(deliveries, 3, "first delivery + 2 redeliveries");
    assert_eq!(
        header(&parked, "x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
    source.close().await.unwrap();
}

#[tokio::test]
async fn nothing_is_lost_across_acks_retries_and_dead_letters() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "all").await.unwrap();
    let inspector = Inspector::connect().await;
    const N: usize = 30;
    for i in 0..N {
        let id = format!("ev-{i}");
        inspector
            .publish(&s.exchange, "posting.upwork", id.as_bytes(), props(&id))
            .await;
    }

    // i % 3 == 0: ack; == 1: retry once then ack; == 2: dead-letter.
    let mut acked = BTreeMap::new();
    let mut dead = 0;
    while acked.len() + dead < N {
        let d = next(&mut source).await;
        let id = String::from_utf8(d.body.clone()).unwrap();
        let i: usize = id.trim_start_matches("ev-").parse().unwrap();
        match (i % 3, d.attempt) {
            (1, 1) => d.retry(Duration::ZERO, "lock_held", true).await.unwrap(),
            (2, _) => {
                d.dead_letter("test", "parked by the test").await.unwrap();
                dead += 1;
            }
            (_, attempt) => {
                d.ack().await.unwrap();
                assert!(acked.insert(id, attempt).is_none(), "acked twice");
            }
        }
    }
    assert_eq!(acked.len(), 20);
    assert!(acked.iter().all(|(id, a)| {
        let i: usize = id.trim_start_matches("ev-").parse().unwrap();
        *a == if i % 3 == 1 { 2 } else { 1 }
    }));
    source.close().await.unwrap();

    let parked = inspector.drain(&s.dead_letter_queue()).await;
    assert_eq!(parked.len(), 10);
    assert_eq!(inspector.ready(&s.queue).await, 0);
    for tier in &s.retry_tiers {
        assert_eq!(inspector.ready(&s.retry_queue(*tier)).await, 0);
    }
}

#[tokio::test]
async fn an_ack_after_the_channel_closed_is_an_error_and_the_message_comes_back() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "late").await.unwrap();
    let inspector = Inspector::connect().await;
    inspector
        .publish(&s.exchange, "posting.upwork", b"late ack", props("late-1"))
        .await;
    let delivery = next(&mut source).await;
    source.close().await.unwrap();

    let err = delivery.ack().await.unwrap_err();
    assert!(matches!(err, SourceError::Unsettled), "{err}");
    let back = inspector.take_eventually(&s.queue, WAIT).await;
    assert_eq!(back.delivery.data, b"late ack");
    assert!(back.delivery.redelivered);
}

#[tokio::test]
async fn stop_ends_the_stream_and_in_flight_deliveries_can_still_be_settled() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "stop").await.unwrap();
    let health = source.health();
    let inspector = Inspector::connect().await;
    inspector
        .publish(&s.exchange, "posting.upwork", b"in flight", props("f-1"))
        .await;
    let delivery = next(&mut source).await;

    source.stop().await.unwrap();
    assert_eq!(health.state(), ConsumerState::Stopped);
    assert!(source.next().await.is_none());
    delivery.ack().await.expect("settling after stop works");
    source.close().await.unwrap();
    assert_eq!(inspector.ready(&s.queue).await, 0);
}

/// The text of a delivery's body.
fn body(d: &bidorch::source::Delivery) -> String {
    String::from_utf8(d.body.clone()).unwrap()
}

/// A session consuming with a prefetch of 40 from a fresh queue, holding the deliveries of
/// `ev-0` … `ev-39` (tags 1 … 40, in order).
struct Forty {
    settings: AmqpSettings,
    _cleanup: Cleanup,
    source: AmqpPostingSource,
    inspector: Inspector,
    deliveries: Vec<bidorch::source::Delivery>,
}

impl Forty {
    async fn taken(consumer_tag: &str) -> Self {
        let mut settings = settings();
        settings.prefetch = 40;
        let cleanup = Cleanup(settings.clone());
        let mut source = AmqpPostingSource::connect(&settings, consumer_tag)
            .await
            .unwrap();
        let inspector = Inspector::connect().await;
        for i in 0..40 {
            let id = format!("ev-{i}");
            inspector
                .publish(
                    &settings.exchange,
                    "posting.upwork",
                    id.as_bytes(),
                    props(&id),
                )
                .await;
        }
        let mut deliveries = Vec::new();
        for _ in 0..40 {
            deliveries.push(next(&mut source).await);
        }
        Self {
            settings,
            _cleanup: cleanup,
            source,
            inspector,
            deliveries,
        }
    }

    /// Takes the delivery of `id` out of the held ones.
    fn take(&mut self, id: &str) -> bidorch::source::Delivery {
        let at = self.deliveries.iter().position(|d| body(d) == id).unwrap();
        self.deliveries.remove(at)
    }

    /// Acks every delivery still held at once (their acks go out together) and expects each to
    /// be written.
    async fn ack_the_rest(&mut self) {
        let acks = std::mem::take(&mut self.deliveries)
            .into_iter()
            .map(|d| d.ack());
        let acked = futures_util::future::join_all(acks).await;
        assert!(acked.iter().all(Result::is_ok), "{acked:?}");
    }

    /// Expects `ev-20`, handed back, to come back redelivered, and acks it.
    async fn ev_20_comes_back(&mut self) {
        let again = next(&mut self.source).await;
        assert_eq!(body(&again), "ev-20", "the handed-back delivery comes back");
        assert!(again.redelivered);
        again.ack().await.unwrap();
    }
}

#[tokio::test]
async fn acks_that_go_out_together_never_cover_a_delivery_still_being_worked_on() {
    if !support::amqp_available().await {
        return;
    }
    let mut forty = Forty::taken("runs").await;
    // ev-10 is still being worked on; ev-20 is handed back (dropped unsettled).
    let held = forty.take("ev-10");
    drop(forty.take("ev-20"));
    // The other 38 settle at once: ev-0..ev-9 go as one run, the rest alone.
    forty.ack_the_rest().await;
    forty.ev_20_comes_back().await;

    // Closing the session hands back what it holds: ev-10 alone, nothing an ack covered.
    let Forty {
        settings,
        source,
        inspector,
        _cleanup,
        ..
    } = forty;
    source.close().await.unwrap();
    drop(held);
    let back = inspector.take_eventually(&settings.queue, WAIT).await;
    assert_eq!(back.delivery.data, b"ev-10");
    assert_eq!(inspector.ready(&settings.queue).await, 0);
}

#[tokio::test]
async fn a_delivery_handed_back_among_acks_that_go_out_together_comes_back_alone() {
    if !support::amqp_available().await {
        return;
    }
    let mut forty = Forty::taken("back").await;
    // ev-20 is handed back while the 39 others settle at once, those below it and above it.
    drop(forty.take("ev-20"));
    forty.ack_the_rest().await;
    forty.ev_20_comes_back().await;
    forty.source.close().await.unwrap();
    assert_eq!(
        forty.inspector.ready(&forty.settings.queue).await,
        0,
        "nothing else comes back"
    );
}
