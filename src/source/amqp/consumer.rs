//! One live subscription — connection, consume channel, confirm channel, consumer — and the
//! translation of a broker message into a [`Delivery`].

use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, Event};
use tokio::task::JoinHandle;

use super::settle::{AmqpSettler, Republisher};
use crate::amqp::connection::{classify, confirm_channel, open_connection, short};
use crate::amqp::headers::{read_attempt, string_headers};
use crate::amqp::topology;
use crate::config::AmqpSettings;
use crate::source::{Delivery, HealthReporter, SourceError};

/// A connected subscription. Dropping it closes its connection (the broker then requeues what
/// this session had not acked).
pub(crate) struct Session {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    republisher: Arc<Republisher>,
    /// Flips the health state as soon as the connection reports an error, even while no one is
    /// waiting for a delivery.
    watcher: JoinHandle<()>,
}

impl Session {
    /// Connects, declares the topology, sets per-consumer QoS and subscribes with manual acks.
    pub(crate) async fn open(
        settings: Arc<AmqpSettings>,
        consumer_tag: &str,
        state: Arc<HealthReporter>,
    ) -> Result<Self, SourceError> {
        // Named so operators (and tests) can find it: `rabbitmqctl list_connections`.
        let connection = open_connection(&settings, &format!("bidorch-{consumer_tag}")).await?;
        let watcher = tokio::spawn(watch_connection(connection.events_listener(), state));
        let opened = async {
            let channel = connection.create_channel().await.map_err(classify)?;
            topology::declare(&channel, &settings).await?;
            // Per-consumer (global=false): quorum queues refuse global QoS.
            channel
                .basic_qos(settings.prefetch, BasicQosOptions { global: false })
                .await
                .map_err(classify)?;
            let republish = confirm_channel(&connection).await?;
            let consumer = channel
                .basic_consume(
                    short(&settings.queue)?,
                    short(consumer_tag)?,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(classify)?;
            Ok::<_, SourceError>((channel, republish, consumer))
        }
        .await;
        match opened {
            Ok((channel, republish, consumer)) => Ok(Self {
                connection,
                channel,
                consumer,
                republisher: Arc::new(Republisher::new(republish, settings)),
                watcher,
            }),
            Err(e) => {
                watcher.abort();
                let _ = connection.close(200, "OK".into()).await;
                Err(e)
            }
        }
    }

    /// The consume channel (for `basic.cancel`).
    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The next delivery; `Some(Err)` when the channel or connection failed, `None` when the
    /// consumer was cancelled (by us or by the broker).
    pub(crate) async fn next_delivery(&mut self) -> Option<Result<Delivery, SourceError>> {
        let next = std::future::poll_fn(|cx| Pin::new(&mut self.consumer).poll_next(cx)).await;
        match next? {
            Ok(message) => Some(Ok(to_delivery(message, &self.republisher))),
            Err(e) => Some(Err(classify(e).into())),
        }
    }

    /// Gives up on a lost session without waiting on a broker that may be gone.
    pub(crate) fn abandon(self) {
        self.watcher.abort();
        let connection = self.connection;
        tokio::spawn(async move {
            let _ = connection.close(320, "bidorch reconnecting".into()).await;
        });
    }

    /// Closes the connection cleanly.
    pub(crate) async fn close(self) {
        self.watcher.abort();
        if let Err(e) = self.connection.close(200, "OK".into()).await {
            tracing::debug!(error = %e, "Closing an already closed RabbitMQ connection");
        }
    }
}

async fn watch_connection(events: impl Stream<Item = Event>, state: Arc<HealthReporter>) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = std::future::poll_fn(|cx| events.as_mut().poll_next(cx)).await {
        match event {
            Event::Error(e) => {
                if state.lost() {
                    tracing::warn!(error = %e, "Consuming stopped: RabbitMQ connection error");
                }
                return;
            }
            Event::ConnectionBlocked(reason) => {
                tracing::warn!(%reason, "RabbitMQ blocked this connection (resource alarm)");
            }
            Event::ConnectionUnblocked => tracing::info!("RabbitMQ unblocked this connection"),
            _ => {}
        }
    }
}

fn to_delivery(message: lapin::message::Delivery, republisher: &Arc<Republisher>) -> Delivery {
    let headers_table = message.properties.headers().clone().unwrap_or_default();
    let attempt = read_attempt(&headers_table);
    let headers = string_headers(&headers_table);
    let message_id = message
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned());
    let settler = AmqpSettler::new(
        message.acker,
        message.properties.clone(),
        Arc::clone(republisher),
    );
    Delivery {
        body: message.data,
        attempt,
        redelivered: message.redelivered,
        message_id,
        headers,
        settler: Box::new(settler),
    }
}
