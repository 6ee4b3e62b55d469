//! The limit: the broker's own consume+ack rate on a fresh quorum queue, with the prefetch the
//! workers use and nothing else — measured two ways, since they differ by more than two to one:
//!
//! - **one at a time**: each ack awaited before the next delivery is taken, as a plain consume
//!   loop does (how the figures the throughput issue started from were measured);
//! - **pipelined**: each ack sent from a task of its own while the loop takes the next delivery,
//!   as a worker settles its postings — what the broker itself can do.

use std::time::{Duration, Instant};

use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::{BenchError, steady_rate};
use crate::config::AmqpSettings;

fn broker(e: lapin::Error) -> BenchError {
    BenchError::Broker(e.to_string())
}

/// How the bare consumer acks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// Each ack awaited before the next delivery.
    OneAtATime,
    /// Each ack from a task of its own.
    Pipelined,
}

/// Publishes `messages` small persistent messages (confirmed) to a fresh quorum queue, then
/// consumes and acks them with `prefetch` outstanding; returns the steady rate of the
/// consume+ack phase (messages per second, see [`steady_rate`]).
pub async fn consume_ack_rate(
    settings: &AmqpSettings,
    queue: &str,
    messages: usize,
    prefetch: u16,
    acks: Acks,
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
    let result = measure(&channel, queue, messages, prefetch, acks).await;
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bench done".into()).await;
    result
}

async fn fill(channel: &Channel, queue: &str, messages: usize) -> Result<(), BenchError> {
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
    Ok(())
}

async fn measure(
    channel: &Channel,
    queue: &str,
    messages: usize,
    prefetch: u16,
    acks: Acks,
) -> Result<f64, BenchError> {
    fill(channel, queue, messages).await?;
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
    let mut acked_at = Vec::with_capacity(messages);
    let mut tasks = tokio::task::JoinSet::new();
    for taken in 0..messages {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut consumer).poll_next(cx));
        let delivery = match tokio::time::timeout(Duration::from_secs(30), next).await {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(e))) => return Err(broker(e)),
            Ok(None) | Err(_) => {
                return Err(BenchError::Broker(format!(
                    "the bare consumer stopped after {taken} of {messages} messages"
                )));
            }
        };
        let ack = async move {
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map(|_| started.elapsed())
        };
        match acks {
            Acks::OneAtATime => acked_at.push(ack.await.map_err(broker)?),
            Acks::Pipelined => {
                tasks.spawn(ack);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        let at = done
            .map_err(|e| BenchError::Broker(e.to_string()))?
            .map_err(broker)?;
        acked_at.push(at);
    }
    // Cancelled before the queue is deleted under it (the broker would close the connection).
    let _ = channel
        .basic_cancel("bidorch-bench-bare".into(), BasicCancelOptions::default())
        .await;
    Ok(steady_rate(&mut acked_at))
}
