//! One live subscription — connection, consume channel, confirm channel, consumer — and the
//! translation of a broker message into a [`Delivery`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_core::Stream;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, Event};
use tokio::task::JoinHandle;

use super::acks::Acks;
use super::settle::{AmqpSettler, Republisher};
use crate::amqp::connection::{classify, confirm_channel, open_connection, short};
use crate::amqp::headers::{
    Route, came_back_from_wait_queue, read_attempt, read_number, string_headers,
};
use crate::amqp::topology;
use crate::config::AmqpSettings;
use crate::source::{
    Delivery, FIRST_SEEN_HEADER, HealthReporter, NOT_BEFORE_HEADER, SourceError, from_unix_ms,
    is_own_header,
};

/// A connected subscription. Dropping it closes its connection (the broker then requeues what
/// this session had not acked).
pub(crate) struct Session {
    settings: Arc<AmqpSettings>,
    connection: Arc<Connection>,
    /// The consume channel.
    channel: Arc<Channel>,
    /// Its acks, shared with each delivery's settler.
    acks: Arc<Acks>,
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
        let connection =
            Arc::new(open_connection(&settings, &format!("bidorch-{consumer_tag}")).await?);
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
            let consumer = subscribe(&channel, &settings.queue, consumer_tag).await?;
            Ok::<_, SourceError>((channel, republish, consumer))
        }
        .await;
        match opened {
            Ok((channel, republish, consumer)) => {
                let channel = Arc::new(channel);
                let acks = Acks::new(Arc::clone(&channel), settings.prefetch);
                Ok(Self {
                    republisher: Arc::new(Republisher::new(
                        connection.clone(),
                        republish,
                        settings.clone(),
                    )),
                    settings,
                    connection,
                    acks,
                    channel,
                    consumer,
                    watcher,
                })
            }
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

    /// Subscribes again (after a pause's `basic.cancel`) under the same tag.
    pub(crate) async fn resubscribe(&mut self, consumer_tag: &str) -> Result<(), SourceError> {
        self.consumer = subscribe(&self.channel, &self.settings.queue, consumer_tag).await?;
        Ok(())
    }

    /// The next delivery; `Some(Err)` when the channel or connection failed, `None` when the
    /// consumer was cancelled (by us or by the broker).
    pub(crate) async fn next_delivery(&mut self) -> Option<Result<Delivery, SourceError>> {
        let next = std::future::poll_fn(|cx| Pin::new(&mut self.consumer).poll_next(cx)).await;
        match next? {
            Ok(message) => Some(Ok(to_delivery(
                message,
                &self.acks,
                &self.republisher,
                &self.settings.queue,
            ))),
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
            tracing::debug!(error = %crate::error::Chain(&e), "Closing an already closed RabbitMQ connection");
        }
    }
}

/// `basic.consume` with manual acks.
async fn subscribe(
    channel: &Channel,
    queue: &str,
    consumer_tag: &str,
) -> Result<Consumer, SourceError> {
    Ok(channel
        .basic_consume(
            short(queue)?,
            short(consumer_tag)?,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(classify)?)
}

async fn watch_connection(events: impl Stream<Item = Event>, state: Arc<HealthReporter>) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = std::future::poll_fn(|cx| events.as_mut().poll_next(cx)).await {
        match event {
            Event::Error(e) => {
                if state.lost() {
                    tracing::warn!(error = %crate::error::Chain(&e), "Consuming stopped: RabbitMQ connection error");
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

/// What a delivery's headers tell the worker: the string headers it may use and bidorch's
/// envelope — trusted only when the message came back through our own wait queues.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub headers: std::collections::BTreeMap<String, String>,
    pub attempt: u32,
    pub first_seen: Option<SystemTime>,
    pub not_before: Option<SystemTime>,
}

/// Reads a delivery's headers table (publisher input: any names, any value types).
pub(crate) fn inbound(table: &FieldTable, route: Route<'_>, queue: &str) -> Inbound {
    let mut headers = string_headers(table);
    if came_back_from_wait_queue(table, route, queue) {
        let time = |name| read_number(table, name).and_then(from_unix_ms);
        Inbound {
            headers,
            attempt: read_attempt(table),
            first_seen: time(FIRST_SEEN_HEADER),
            not_before: time(NOT_BEFORE_HEADER),
        }
    } else {
        // A publisher's `x-bidorch-*` are dropped.
        headers.retain(|name, _| !is_own_header(name));
        Inbound {
            headers,
            attempt: 1,
            first_seen: None,
            not_before: None,
        }
    }
}

fn to_delivery(
    message: lapin::message::Delivery,
    acks: &Arc<Acks>,
    republisher: &Arc<Republisher>,
    queue: &str,
) -> Delivery {
    let table = message.properties.headers().clone().unwrap_or_default();
    let route = Route {
        exchange: message.exchange.as_str(),
        routing_key: message.routing_key.as_str(),
    };
    let inbound = inbound(&table, route, queue);
    let message_id = message
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned());
    let settler = AmqpSettler::new(
        message.acker,
        Arc::clone(acks),
        message.delivery_tag,
        message.properties.clone(),
        Arc::clone(republisher),
    );
    Delivery {
        body: message.data,
        attempt: inbound.attempt,
        redelivered: message.redelivered,
        message_id,
        headers: inbound.headers,
        first_seen: inbound.first_seen.unwrap_or_else(SystemTime::now),
        not_before: inbound.not_before,
        settler: Box::new(settler),
    }
}
