//! The limit: the broker's own consume+ack rate on a fresh quorum queue, with the prefetch the
//! workers use and nothing else — what no pipeline on this broker can beat.

use std::time::{Duration, Instant};

use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use super::BenchError;
use crate::config::AmqpSettings;

fn broker(e: lapin::Error) -> BenchError {
    BenchError::Broker(e.to_string())
}

/// Publishes `messages` small persistent messages (confirmed), then consumes and acks them one
/// by one with `prefetch` outstanding; returns messages per second of the consume+ack phase.
pub async fn consume_ack_rate(
    settings: &AmqpSettings,
    queue: &str,
    messages: usize,
    prefetch: u16,
) -> Result<f64, BenchError> {
    let conn = Connection::connect(settings.url.expose(), ConnectionProperties::default())
        .await
        .map_err(broker)?;
    let channel = conn.create_channel().await.map_err(broker)?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map_err(broker)?;
    let result = measure(&channel, queue, messages, prefetch).await;
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bench done".into()).await;
    result
}

async fn measure(
    channel: &lapin::Channel,
    queue: &str,
    messages: usize,
    prefetch: u16,
) -> Result<f64, BenchError> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker)?;
    let body = br#"{"event_id":"bench","marketplace":"upwork","posting_id":"p","title":"t"}"#;
    let mut confirms = Vec::with_capacity(messages);
    for _ in 0..messages {
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .map_err(broker)?,
        );
    }
    for confirm in confirms {
        confirm.await.map_err(broker)?;
    }
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(broker)?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bidorch-bench-bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker)?;
    let started = Instant::now();
    let mut acked = 0;
    while acked < messages {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut consumer).poll_next(cx));
        let delivery = match tokio::time::timeout(Duration::from_secs(30), next).await {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(e))) => return Err(broker(e)),
            Ok(None) | Err(_) => {
                return Err(BenchError::Broker(format!(
                    "the bare consumer stopped after {acked} of {messages} messages"
                )));
            }
        };
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(broker)?;
        acked += 1;
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64().max(f64::EPSILON);
    // Cancelled before the queue is deleted under it (the broker would close the connection).
    let _ = channel
        .basic_cancel("bidorch-bench-bare".into(), BasicCancelOptions::default())
        .await;
    Ok(rate)
}
