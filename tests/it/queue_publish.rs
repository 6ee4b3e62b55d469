//! The publisher against a real broker: properties on the wire, unroutable events as errors,
//! windowed batches with exact failure attribution, and `bidorch publish` validation-first.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use bidorch::amqp::topology;
use bidorch::publish::{
    OutgoingEvent, PublishError, PublishOptions, Publisher, run_publish_command,
};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use support::queue::{Cleanup, Inspector, eventually, posting, settings};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn published_events_carry_the_contract_properties() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let inspector = Inspector::connect().await;
    topology::declare(&inspector.channel, &s).await.unwrap();
    let publisher = Publisher::connect(&s).await.unwrap();

    let body = posting("ev-props", "freelancer", "job-9");
    let headers = BTreeMap::from([
        (
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        ),
        ("tracestate".to_owned(), "vendor=1".to_owned()),
    ]);
    publisher
        .publish_with_headers(&body, &headers)
        .await
        .expect("confirmed and routed");

    let got = inspector.take_eventually(&s.queue, WAIT).await.delivery;
    assert_eq!(got.data, body);
    assert_eq!(got.routing_key.as_str(), "posting.freelancer");
    assert_eq!(got.exchange.as_str(), s.exchange);
    let p = &got.properties;
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(p.delivery_mode(), &Some(2));
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), "ev-props");
    let h = p.headers().as_ref().unwrap().inner();
    assert_eq!(
        h.get("traceparent"),
        Some(&AMQPValue::LongString(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()
        ))
    );
    assert_eq!(
        h.get("tracestate"),
        Some(&AMQPValue::LongString("vendor=1".into()))
    );
    publisher.close().await;
}

#[tokio::test]
async fn an_unroutable_event_is_an_error() {
    if !support::amqp_available().await {
        return;
    }
    // The exchange exists (the publisher declares it) but no queue is bound to it.
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let publisher = Publisher::connect(&s).await.unwrap();

    let err = publisher
        .publish(&posting("ev-lost", "upwork", "job-1"))
        .await
        .unwrap_err();
    match &err {
        PublishError::Unroutable {
            event_id,
            routing_key,
            ..
        } => {
            assert_eq!(event_id, "ev-lost");
            assert_eq!(routing_key, "posting.upwork");
        }
        other => panic!("expected Unroutable, got {other}"),
    }
    // The publisher is still usable after a return.
    let again = publisher
        .publish(&posting("ev-lost-2", "upwork", "job-2"))
        .await;
    assert!(matches!(again, Err(PublishError::Unroutable { .. })));
    publisher.close().await;
}

#[tokio::test]
async fn an_invalid_event_is_refused_before_sending() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let inspector = Inspector::connect().await;
    topology::declare(&inspector.channel, &s).await.unwrap();
    let publisher = Publisher::connect(&s).await.unwrap();

    let err = publisher
        .publish(br#"{"event_id":"e","marketplace":"UPPER","posting_id":"p","title":"t"}"#)
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Invalid(_)), "{err}");
    publisher.close().await;
    assert_eq!(inspector.ready(&s.queue).await, 0);
}

#[tokio::test]
async fn a_windowed_batch_reports_exactly_the_unroutable_events() {
    if !support::amqp_available().await {
        return;
    }
    // Only `posting.upwork` is bound: freelancer events are unroutable.
    let mut s = settings();
    s.publish_window = 16;
    let _cleanup = Cleanup(s.clone());
    let publisher = Publisher::connect(&s).await.unwrap();
    let inspector = Inspector::connect().await;
    inspector
        .channel
        .queue_declare(
            s.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    inspector
        .channel
        .queue_bind(
            s.queue.as_str().into(),
            s.exchange.as_str().into(),
            "posting.upwork".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let events: Vec<OutgoingEvent> = (0..200)
        .map(|i| {
            let marketplace = if i % 4 == 0 { "freelancer" } else { "upwork" };
            OutgoingEvent::parse(posting(&format!("ev-{i}"), marketplace, &format!("p{i}")))
                .unwrap()
        })
        .collect();
    let mut confirmed = 0;
    let results = publisher
        .publish_many_with(&events, |_| confirmed += 1)
        .await;

    assert_eq!(confirmed, 200);
    for (i, r) in results.iter().enumerate() {
        if i % 4 == 0 {
            assert!(
                matches!(r, Err(PublishError::Unroutable { event_id, .. }) if *event_id == format!("ev-{i}")),
                "event {i}: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "event {i}: {r:?}");
        }
    }
    eventually(WAIT, "150 routed events are in the queue", || async {
        inspector.ready(&s.queue).await == 150
    })
    .await;
    publisher.close().await;
}

fn streaming() -> PublishOptions {
    PublishOptions {
        progress: false,
        all_or_nothing: false,
    }
}

/// A producer that writes a line only once the previous one is in the queue: the command must
/// publish as lines arrive (it used to read everything first), report a bad line with its
/// number, skip it, and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_command_streams_lines_as_a_producer_writes_them() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let inspector = Inspector::connect().await;
    topology::declare(&inspector.channel, &s).await.unwrap();

    let (mut producer, pipe) = tokio::io::duplex(64 * 1024);
    let command = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut reported = Vec::new();
            let summary = run_publish_command(
                &s,
                tokio::io::BufReader::new(pipe),
                streaming(),
                |line, _| reported.push(line),
            )
            .await;
            (summary, reported)
        })
    };
    use tokio::io::AsyncWriteExt as _;
    for i in 0..3 {
        let mut line = posting(&format!("stream-{i}"), "upwork", &format!("s{i}"));
        line.push(b'\n');
        producer.write_all(&line).await.unwrap();
        eventually(
            WAIT,
            &format!("event {i} published before the next line"),
            || async { inspector.ready(&s.queue).await == i as u32 + 1 },
        )
        .await;
        if i == 1 {
            producer
                .write_all(b"{\"not\": \"an event\"}\n")
                .await
                .unwrap();
        }
    }
    drop(producer);
    let (summary, reported) = command.await.unwrap();
    let summary = summary.expect("the stream ends cleanly");
    assert_eq!(summary.published, 3);
    assert_eq!(summary.invalid, 1);
    assert_eq!(
        reported,
        vec![3],
        "the bad line is reported with its number"
    );
    assert_eq!(summary.invalid_lines[0].0, 3);
    assert!(!summary.is_complete());
    assert!(summary.to_string().contains("line 3: invalid"), "{summary}");
}

#[tokio::test]
async fn the_publish_command_sends_every_line_and_summarises() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let inspector = Inspector::connect().await;
    topology::declare(&inspector.channel, &s).await.unwrap();

    let mut input = String::new();
    for i in 0..150 {
        let line =
            String::from_utf8(posting(&format!("ev-{i}"), "upwork", &format!("p{i}"))).unwrap();
        input.push_str(&line);
        input.push('\n');
        if i % 50 == 0 {
            input.push('\n'); // blank lines are skipped
        }
    }
    let summary = run_publish_command(&s, input.as_bytes(), streaming(), |_, _| {})
        .await
        .expect("all lines valid");
    assert_eq!(summary.published, 150);
    assert_eq!(summary.failed, 0);
    assert!(summary.is_complete());
    assert_eq!(summary.to_string(), "published 150, failed 0");
    eventually(WAIT, "150 events are in the queue", || async {
        inspector.ready(&s.queue).await == 150
    })
    .await;
}

#[tokio::test]
async fn the_publish_command_sends_nothing_when_a_line_is_bad() {
    if !support::amqp_available().await {
        return;
    }
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let inspector = Inspector::connect().await;
    topology::declare(&inspector.channel, &s).await.unwrap();

    let mut input = String::new();
    for i in 0..20 {
        let line = if i == 12 {
            r#"{"event_id":"e12","marketplace":"upwork","posting_id":"has space","title":"t"}"#
                .to_owned()
        } else {
            String::from_utf8(posting(&format!("ev-{i}"), "upwork", &format!("p{i}"))).unwrap()
        };
        input.push_str(&line);
        input.push('\n');
    }
    let options = PublishOptions {
        progress: false,
        all_or_nothing: true,
    };
    let err = run_publish_command(&s, input.as_bytes(), options, |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::InvalidLines {
                line: 13,
                count: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("line 13"), "{err}");
    assert!(err.to_string().contains("nothing was sent"), "{err}");
    assert_eq!(inspector.ready(&s.queue).await, 0);
}

#[tokio::test]
async fn the_publish_command_reports_unroutable_lines_in_the_summary() {
    if !support::amqp_available().await {
        return;
    }
    // No worker topology: the exchange has no bindings, so every event is returned.
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let input = format!(
        "{}\n{}\n",
        String::from_utf8(posting("ev-a", "upwork", "a")).unwrap(),
        String::from_utf8(posting("ev-b", "upwork", "b")).unwrap()
    );
    let summary = run_publish_command(&s, input.as_bytes(), streaming(), |_, _| {})
        .await
        .expect("valid input");
    assert_eq!(summary.published, 0);
    assert_eq!(summary.failed, 2);
    assert_eq!(summary.failures[1].line, 2);
    assert_eq!(summary.failures[1].event_id, "ev-b");
    assert!(matches!(
        summary.failures[0].error,
        PublishError::Unroutable { .. }
    ));
}

#[tokio::test]
async fn a_negative_confirm_is_an_error_naming_the_event() {
    if !support::amqp_available().await {
        return;
    }
    // A full queue with `reject-publish` makes the broker nack further publishes.
    let s = settings();
    let _cleanup = Cleanup(s.clone());
    let publisher = Publisher::connect(&s).await.unwrap();
    let inspector = Inspector::connect().await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    inspector
        .channel
        .queue_declare(
            s.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    inspector
        .channel
        .queue_bind(
            s.queue.as_str().into(),
            s.exchange.as_str().into(),
            "posting.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    publisher
        .publish(&posting("fits", "upwork", "p1"))
        .await
        .expect("the first fits");
    let err = publisher
        .publish(&posting("overflows", "upwork", "p2"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PublishError::Refused { event_id } if event_id == "overflows"),
        "{err}"
    );
    publisher.close().await;
}
