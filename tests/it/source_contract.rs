//! One delivery-semantics contract, run against every posting source: the in-process
//! `MemoryPostingSource` and the RabbitMQ `AmqpPostingSource` (real broker, isolated names).
//! Each contract test below exists twice, as `memory::<name>` and `amqp::<name>`.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bidorch::config::AmqpSettings;
use bidorch::source::memory::MemoryQueue;
use bidorch::source::{
    AmqpPostingSource, ConsumerState, Delivery, MemoryPostingSource, PostingSource, REASON_HEADER,
    SourceError,
};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use support::queue::{Cleanup, Inspector};

const WAIT: Duration = Duration::from_secs(15);

/// A parked message as the contract sees it: body, reason, detail, attempt.
type Dead = (String, String, String, u32);

/// What the contract needs from a backend.
#[async_trait]
trait Backend: Send + Sync {
    type Source: PostingSource;
    /// A new consumer on the backend's queue.
    async fn open(&self, prefetch: u16) -> Self::Source;
    /// Closes a consumer (its unsettled deliveries go back to the queue).
    async fn close(&self, source: Self::Source);
    /// Publishes body `id` with message id `id`.
    async fn publish(&self, id: &str);
    /// The first `n` parked messages (waiting, bounded, for them to arrive).
    async fn dead_letters(&self, n: usize) -> Vec<Dead>;
}

struct Memory {
    queue: MemoryQueue,
}

#[async_trait]
impl Backend for Memory {
    type Source = MemoryPostingSource;
    async fn open(&self, prefetch: u16) -> MemoryPostingSource {
        self.queue.subscribe(prefetch.into())
    }
    async fn close(&self, source: MemoryPostingSource) {
        drop(source);
    }
    async fn publish(&self, id: &str) {
        self.queue
            .publish_with(id.as_bytes(), Some(id.to_owned()), BTreeMap::new());
    }
    async fn dead_letters(&self, n: usize) -> Vec<Dead> {
        let dead = self.queue.dead_letters();
        assert_eq!(dead.len(), n, "parked messages");
        dead.into_iter()
            .map(|d| {
                let body = String::from_utf8(d.body).unwrap();
                (body, d.reason, d.detail, d.attempt)
            })
            .collect()
    }
}

struct Amqp {
    settings: AmqpSettings,
    inspector: Inspector,
    _cleanup: Cleanup,
}

impl Amqp {
    async fn new() -> Self {
        let settings = support::queue::settings();
        let inspector = Inspector::connect().await;
        bidorch::amqp::topology::declare(&inspector.channel, &settings)
            .await
            .unwrap();
        Self {
            _cleanup: Cleanup(settings.clone()),
            settings,
            inspector,
        }
    }
}

fn header_text(value: Option<&AMQPValue>) -> String {
    match value {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        other => format!("{other:?}"),
    }
}

#[async_trait]
impl Backend for Amqp {
    type Source = AmqpPostingSource;
    async fn open(&self, prefetch: u16) -> AmqpPostingSource {
        let mut settings = self.settings.clone();
        settings.prefetch = prefetch;
        AmqpPostingSource::connect(&settings, &support::unique("consumer"))
            .await
            .unwrap()
    }
    async fn close(&self, source: AmqpPostingSource) {
        source.close().await.unwrap();
    }
    async fn publish(&self, id: &str) {
        self.inspector
            .publish(
                &self.settings.exchange,
                "posting.upwork",
                id.as_bytes(),
                BasicProperties::default().with_message_id(id.into()),
            )
            .await;
    }
    async fn dead_letters(&self, n: usize) -> Vec<Dead> {
        let mut all = Vec::new();
        for _ in 0..n {
            let m = self
                .inspector
                .take_eventually(&self.settings.dead_letter_queue(), WAIT)
                .await
                .delivery;
            let h = m.properties.headers().clone().unwrap_or_default();
            all.push((
                String::from_utf8(m.data).unwrap(),
                // Parked by us: our reason header; by the broker: its x-death reason.
                header_text(
                    h.inner()
                        .get("x-bidorch-reason")
                        .or_else(|| h.inner().get("x-first-death-reason")),
                ),
                header_text(h.inner().get("x-bidorch-detail")),
                // Absent (the broker parked an attempt-1 message): 1, as for deliveries.
                header_text(h.inner().get("x-bidorch-attempt"))
                    .parse()
                    .unwrap_or(1),
            ));
        }
        all
    }
}

async fn next(source: &mut impl PostingSource) -> Delivery {
    crate::support::queue::next_within(WAIT, source).await
}

fn text(d: &Delivery) -> String {
    String::from_utf8(d.body.clone()).unwrap()
}

async fn an_acked_message_is_never_redelivered(b: impl Backend) {
    let mut s = b.open(1).await;
    b.publish("a").await;
    let d = next(&mut s).await;
    assert_eq!(text(&d), "a");
    d.ack().await.unwrap();
    b.close(s).await;

    // Had "a" stayed unsettled, closing would have put it back ahead of the marker.
    let mut s = b.open(1).await;
    b.publish("marker").await;
    let d = next(&mut s).await;
    assert_eq!(text(&d), "marker");
    d.ack().await.unwrap();
    b.close(s).await;
}

async fn a_retry_comes_back_after_its_delay_with_the_next_attempt(b: impl Backend) {
    let mut s = b.open(1).await;
    b.publish("r").await;
    let d = next(&mut s).await;
    assert_eq!(d.attempt, 1);
    assert_eq!(d.message_id.as_deref(), Some("r"));

    let retried_at = Instant::now();
    d.retry(Duration::from_millis(200), "lock_held", true)
        .await
        .unwrap();
    let d = next(&mut s).await;
    assert!(
        retried_at.elapsed() >= Duration::from_millis(200),
        "came back before its delay"
    );
    assert_eq!(text(&d), "r");
    assert_eq!(d.attempt, 2);
    assert_eq!(d.message_id.as_deref(), Some("r"));
    assert_eq!(d.headers[REASON_HEADER], "lock_held");
    d.ack().await.unwrap();
    b.close(s).await;
}

async fn a_dead_lettered_message_is_parked_with_its_reason(b: impl Backend) {
    let mut s = b.open(1).await;
    b.publish("p").await;
    let d = next(&mut s).await;
    d.dead_letter("invalid_json", "expected value at line 1")
        .await
        .unwrap();
    assert_eq!(
        b.dead_letters(1).await,
        vec![(
            "p".to_owned(),
            "invalid_json".to_owned(),
            "expected value at line 1".to_owned(),
            1
        )]
    );
    b.publish("marker").await;
    let d = next(&mut s).await;
    assert_eq!(text(&d), "marker", "the parked message is not redelivered");
    d.ack().await.unwrap();
    b.close(s).await;
}

async fn a_delivery_dropped_unsettled_is_redelivered(b: impl Backend) {
    let mut s = b.open(1).await;
    b.publish("u").await;
    let d = next(&mut s).await;
    assert!(!d.redelivered);
    drop(d);
    let d = next(&mut s).await;
    assert_eq!(text(&d), "u");
    assert!(d.redelivered);
    assert_eq!(d.attempt, 1);
    d.ack().await.unwrap();
    b.close(s).await;
}

async fn closing_a_consumer_hands_back_its_unsettled_deliveries(b: impl Backend) {
    let mut first = b.open(1).await;
    b.publish("c").await;
    let d = next(&mut first).await;
    b.close(first).await;

    let err = d.ack().await.unwrap_err();
    assert!(matches!(err, SourceError::Unsettled), "{err}");
    let mut second = b.open(1).await;
    let d = next(&mut second).await;
    assert_eq!(text(&d), "c");
    assert!(d.redelivered);
    d.ack().await.unwrap();
    b.close(second).await;
}

async fn prefetch_bounds_unsettled_deliveries(b: impl Backend) {
    let mut s = b.open(2).await;
    for id in ["1", "2", "3"] {
        b.publish(id).await;
    }
    let d1 = next(&mut s).await;
    let d2 = next(&mut s).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.next())
            .await
            .is_err(),
        "a third delivery arrived while two were unsettled with prefetch 2"
    );
    d1.ack().await.unwrap();
    let d3 = next(&mut s).await;
    assert_eq!(text(&d3), "3");
    d2.ack().await.unwrap();
    d3.ack().await.unwrap();
    b.close(s).await;
}

async fn nothing_is_lost_under_mixed_settlement(b: impl Backend) {
    const N: usize = 30;
    let mut s = b.open(5).await;
    for i in 0..N {
        b.publish(&i.to_string()).await;
    }
    // i % 4: 0 ack; 1 retry once, then ack; 2 dead-letter; 3 drop once, then ack.
    let mut acked = BTreeMap::new();
    let mut parked = Vec::new();
    while acked.len() + parked.len() < N {
        let d = next(&mut s).await;
        let i: usize = text(&d).parse().unwrap();
        match i % 4 {
            1 if d.attempt == 1 => d.retry(Duration::ZERO, "lock_held", true).await.unwrap(),
            2 => {
                d.dead_letter("test", "parked").await.unwrap();
                parked.push(i);
            }
            3 if !d.redelivered => drop(d),
            _ => {
                d.ack().await.unwrap();
                assert!(acked.insert(i, ()).is_none(), "{i} acked twice");
            }
        }
    }
    assert_eq!(acked.len(), 23);
    assert_eq!(parked.len(), 7);
    let mut dead: Vec<usize> = b
        .dead_letters(7)
        .await
        .into_iter()
        .map(|(body, ..)| body.parse().unwrap())
        .collect();
    dead.sort_unstable();
    parked.sort_unstable();
    assert_eq!(dead, parked);
    b.close(s).await;
}

/// Both backends run with a delivery limit of 3 (see `contract!`).
async fn a_message_returned_past_the_delivery_limit_is_parked(b: impl Backend) {
    let mut s = b.open(1).await;
    b.publish("crash").await;
    for delivery in 1..=4 {
        let d = next(&mut s).await;
        assert_eq!(text(&d), "crash");
        assert_eq!(d.redelivered, delivery > 1);
        drop(d); // as when the handler panics
    }
    let dead = b.dead_letters(1).await;
    assert_eq!(dead[0].0, "crash");
    assert_eq!(dead[0].1, "delivery_limit");
    b.publish("marker").await;
    let d = next(&mut s).await;
    assert_eq!(text(&d), "marker");
    d.ack().await.unwrap();
    b.close(s).await;
}

async fn stop_ends_the_stream_but_settling_still_works(b: impl Backend) {
    let mut s = b.open(1).await;
    b.publish("s").await;
    let d = next(&mut s).await;
    s.stop().await.unwrap();
    assert_eq!(s.health().state(), ConsumerState::Stopped);
    assert!(s.next().await.is_none());
    d.ack().await.expect("settling after stop works");
    b.close(s).await;
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Memory {
                        queue: super::MemoryQueue::new(3),
                    })
                    .await;
                }
            )*
        }
        mod amqp {
            $(
                #[tokio::test]
                async fn $name() {
                    if !super::support::amqp_available().await {
                        return;
                    }
                    super::$name(super::Amqp::new().await).await;
                }
            )*
        }
    };
}

contract!(
    an_acked_message_is_never_redelivered,
    a_retry_comes_back_after_its_delay_with_the_next_attempt,
    a_dead_lettered_message_is_parked_with_its_reason,
    a_delivery_dropped_unsettled_is_redelivered,
    closing_a_consumer_hands_back_its_unsettled_deliveries,
    prefetch_bounds_unsettled_deliveries,
    nothing_is_lost_under_mixed_settlement,
    a_message_returned_past_the_delivery_limit_is_parked,
    stop_ends_the_stream_but_settling_still_works,
);
