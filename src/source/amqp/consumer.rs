//! One live subscription — connection, consume channel, confirm channel, consumer — and the
//! translation of a broker message into a [`Delivery`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer, Event};
use tokio::task::JoinHandle;

use super::settle::{AmqpSettler, Republisher};
use super::{confirm_channel, from_lapin, open_connection, short, topology};
use crate::config::AmqpSettings;
use crate::source::{ATTEMPT_HEADER, Delivery, HealthReporter, SourceError};

/// Header names the broker owns; a copy we publish must not carry the original's values.
pub(crate) fn is_broker_header(name: &str) -> bool {
    name == "x-death"
        || name == "x-delivery-count"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

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
            let channel = connection.create_channel().await.map_err(from_lapin)?;
            topology::declare(&channel, &settings).await?;
            // Per-consumer (global=false): quorum queues refuse global QoS.
            channel
                .basic_qos(settings.prefetch, BasicQosOptions { global: false })
                .await
                .map_err(from_lapin)?;
            let republish = confirm_channel(&connection).await?;
            let consumer = channel
                .basic_consume(
                    short(&settings.queue)?,
                    short(consumer_tag)?,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(from_lapin)?;
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
            Err(e) => Some(Err(from_lapin(e))),
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

/// `x-bidorch-attempt` as any integer type or a decimal string; 1 when absent or nonsense.
pub(crate) fn read_attempt(headers: &FieldTable) -> u32 {
    let value = headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(ATTEMPT_HEADER))
        .map(|(_, v)| v);
    let n: i128 = match value {
        Some(AMQPValue::ShortShortInt(v)) => (*v).into(),
        Some(AMQPValue::ShortShortUInt(v)) => (*v).into(),
        Some(AMQPValue::ShortInt(v)) => (*v).into(),
        Some(AMQPValue::ShortUInt(v)) => (*v).into(),
        Some(AMQPValue::LongInt(v)) => (*v).into(),
        Some(AMQPValue::LongUInt(v)) => (*v).into(),
        Some(AMQPValue::LongLongInt(v)) => (*v).into(),
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes())
            .trim()
            .parse()
            .unwrap_or(1),
        Some(AMQPValue::ShortString(s)) => s.as_str().trim().parse().unwrap_or(1),
        _ => 1,
    };
    u32::try_from(n).ok().filter(|n| *n >= 1).unwrap_or(1)
}

/// String-valued headers with lower-cased names, plus `x-death` rendered as
/// `queue/reason/count` entries (most recent first), so callers can see where a message has been.
pub(crate) fn string_headers(headers: &FieldTable) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in headers.inner() {
        let text = match value {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            AMQPValue::FieldArray(entries) if name.as_str() == "x-death" => {
                render_x_death(entries.as_slice())
            }
            _ => continue,
        };
        out.insert(name.as_str().to_ascii_lowercase(), text);
    }
    out
}

fn render_x_death(entries: &[AMQPValue]) -> String {
    let field = |t: &FieldTable, k: &str| -> String {
        match t.inner().get(k) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
            Some(AMQPValue::LongLongInt(n)) => n.to_string(),
            Some(AMQPValue::LongInt(n)) => n.to_string(),
            _ => String::new(),
        }
    };
    entries
        .iter()
        .filter_map(|e| match e {
            AMQPValue::FieldTable(t) => Some(format!(
                "{}/{}/{}",
                field(t, "queue"),
                field(t, "reason"),
                field(t, "count")
            )),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};

    fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(k), v);
        }
        t
    }

    #[test]
    fn attempt_reads_any_integer_or_text_and_defaults_to_one() {
        assert_eq!(read_attempt(&FieldTable::default()), 1);
        assert_eq!(
            read_attempt(&table(vec![(ATTEMPT_HEADER, AMQPValue::LongLongInt(3))])),
            3
        );
        assert_eq!(
            read_attempt(&table(vec![(ATTEMPT_HEADER, AMQPValue::ShortUInt(7))])),
            7
        );
        assert_eq!(
            read_attempt(&table(vec![(
                ATTEMPT_HEADER,
                AMQPValue::LongString(LongString::from("4"))
            )])),
            4
        );
        assert_eq!(
            read_attempt(&table(vec![(ATTEMPT_HEADER, AMQPValue::LongInt(-2))])),
            1
        );
    }

    #[test]
    fn string_headers_are_lower_cased_and_x_death_is_rendered() {
        let death = table(vec![
            ("queue", AMQPValue::LongString("q.retry.1s".into())),
            ("reason", AMQPValue::LongString("expired".into())),
            ("count", AMQPValue::LongLongInt(1)),
        ]);
        let headers = table(vec![
            ("TraceParent", AMQPValue::LongString("00-abc-def-01".into())),
            (
                "x-death",
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
            ),
            ("x-bidorch-attempt", AMQPValue::LongLongInt(2)),
        ]);
        let out = string_headers(&headers);
        assert_eq!(out["traceparent"], "00-abc-def-01");
        assert_eq!(out["x-death"], "q.retry.1s/expired/1");
        assert!(!out.contains_key("x-bidorch-attempt"));
    }
}
