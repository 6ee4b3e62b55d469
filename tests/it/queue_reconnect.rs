//! Staying alive through what the broker does: connections closed broker-side, consumers
//! cancelled, a topology that can no longer be declared, and a publisher losing its channel.

use crate::support;

use std::time::Duration;

use bidorch::amqp::topology;
use bidorch::config::SecretUrl;
use bidorch::publish::{OutgoingEvent, Publisher};
use bidorch::source::{AmqpPostingSource, ConsumerState, PostingSource, SourceError};
use lapin::BasicProperties;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use support::queue::{Cleanup, Inspector, close_connection_named, eventually, posting, settings};

const WAIT: Duration = Duration::from_secs(20);

async fn next(source: &mut AmqpPostingSource) -> bidorch::source::Delivery {
    support::queue::next_within(WAIT, source).await
}

fn props(id: &str) -> BasicProperties {
    BasicProperties::default().with_message_id(id.into())
}

#[tokio::test]
async fn the_source_resumes_consuming_after_the_broker_closes_its_connection() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, &support::unique("rc"))
        .await
        .unwrap();
    let mut health = source.health();
    let inspector = Inspector::connect().await;
    inspector
        .publish(&s.exchange, "posting.upwork", b"in flight", props("f"))
        .await;
    let in_flight = next(&mut source).await;
    assert_eq!(health.sessions(), 1);

    if !close_connection_named(&source.connection_name()).await {
        return;
    }
    // Noticed without anyone waiting on the consumer: /readyz turns red at once.
    let seen = tokio::time::timeout(
        WAIT,
        health.wait_for(|h| h.state != ConsumerState::Consuming),
    )
    .await
    .expect("the loss is reported");
    assert_eq!(seen.state, ConsumerState::Reconnecting);
    let err = in_flight.ack().await.unwrap_err();
    assert!(matches!(err, SourceError::Unsettled), "{err}");

    // The unacked message comes back on the new session, marked redelivered.
    let again = next(&mut source).await;
    assert_eq!(again.body, b"in flight");
    assert!(again.redelivered);
    again.ack().await.unwrap();
    assert_eq!(health.state(), ConsumerState::Consuming);
    assert_eq!(health.sessions(), 2);

    inspector
        .publish(&s.exchange, "posting.upwork", b"after", props("a"))
        .await;
    let after = next(&mut source).await;
    assert_eq!(after.body, b"after");
    after.ack().await.unwrap();
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_consumer_cancelled_by_the_broker_resubscribes() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, "cancelled").await.unwrap();
    let mut health = source.health();
    let inspector = Inspector::connect().await;

    // Deleting the queue makes the broker send basic.cancel: the stream just ends.
    inspector
        .channel
        .queue_delete(s.queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let publisher = async {
        tokio::time::timeout(
            WAIT,
            health.wait_for(|h| h.sessions >= 2 && h.state == ConsumerState::Consuming),
        )
        .await
        .expect("the source resubscribes");
        inspector
            .publish(&s.exchange, "posting.upwork", b"after cancel", props("c"))
            .await;
    };
    let (delivery, ()) = tokio::join!(next(&mut source), publisher);
    assert_eq!(delivery.body, b"after cancel");
    delivery.ack().await.unwrap();
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_source_that_cannot_recover_fails_and_ends() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let mut source = AmqpPostingSource::connect(&s, &support::unique("doomed"))
        .await
        .unwrap();
    let health = source.health();
    let inspector = Inspector::connect().await;

    // Someone re-creates the parking lot with other arguments: re-declaring it can only fail.
    inspector
        .channel
        .queue_delete(
            s.dead_letter_queue().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let mut conflicting = FieldTable::default();
    conflicting.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    inspector
        .channel
        .queue_declare(
            s.dead_letter_queue().as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            conflicting,
        )
        .await
        .unwrap();
    if !close_connection_named(&source.connection_name()).await {
        return;
    }

    let ended = tokio::time::timeout(WAIT, source.next())
        .await
        .expect("the source gives up in time");
    match ended {
        Some(Err(SourceError::Topology(msg))) => {
            assert!(msg.contains(&s.dead_letter_queue()), "{msg}")
        }
        other => panic!("expected a topology error, got {other:?}"),
    }
    assert_eq!(health.state(), ConsumerState::Failed);
    assert!(health.check().is_err());
    assert!(source.next().await.is_none(), "a failed source stays ended");
}

#[tokio::test]
async fn connecting_gives_up_after_the_reconnect_timeout_without_leaking_the_password() {
    let mut s = settings();
    s.url = SecretUrl::new("amqp://guest:hunter2@127.0.0.1:1/%2f");
    s.reconnect_timeout = Duration::from_millis(800);

    let err = AmqpPostingSource::connect(&s, "nowhere").await.unwrap_err();
    assert!(matches!(err, SourceError::Unavailable(_)), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("reconnect_timeout"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");

    let err = Publisher::connect(&s).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[tokio::test]
async fn the_publisher_reconnects_and_sends_after_its_connection_is_closed() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let inspector = Inspector::connect().await;
    topology::declare(&inspector.channel, &s).await.unwrap();
    let publisher = Publisher::connect(&s).await.unwrap();
    let batch = |from: usize| -> Vec<OutgoingEvent> {
        (from..from + 100)
            .map(|i| OutgoingEvent::parse(posting(&format!("ev-{i}"), "upwork", "p")).unwrap())
            .collect()
    };
    assert!(
        publisher
            .publish_many(&batch(0))
            .await
            .iter()
            .all(Result::is_ok)
    );

    if !close_connection_named(publisher.connection_name()).await {
        return;
    }
    let results = publisher.publish_many(&batch(100)).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    eventually(WAIT, "all 200 events are queued", || async {
        inspector.ready(&s.queue).await == 200
    })
    .await;
    publisher.close().await;
}
