//! One windowed pass of a batch over a confirm channel: publish with at most `window` confirms
//! outstanding, then match returned (unroutable) messages to the events they belong to.

use std::collections::{BTreeMap, VecDeque};

use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation};

use super::{OutgoingEvent, PublishError};
use crate::amqp::connection::{classify, short};
use crate::config::AmqpSettings;

/// One pass of a batch over one channel.
pub(super) struct Round<'a> {
    pub(super) channel: &'a Channel,
    pub(super) settings: &'a AmqpSettings,
    pub(super) window: usize,
}

/// A channel failure mid-round, and the indexes whose fate is unknown (unconfirmed or unsent).
type Unsettled = (PublishError, Vec<usize>);

/// What the confirms of one round said.
#[derive(Default)]
struct Confirms {
    /// Acked by the broker — routed, unless one of `returned` is theirs.
    acked: Vec<usize>,
    returned: Vec<BasicReturnMessage>,
}

impl Round<'_> {
    /// Publishes `todo` keeping at most `window` confirms outstanding.
    pub(super) async fn send(
        &self,
        events: &[OutgoingEvent],
        todo: &[usize],
        results: &mut [Option<Result<(), PublishError>>],
        on_confirmed: &mut impl FnMut(usize),
    ) -> Result<(), Unsettled> {
        let mut pending: VecDeque<(usize, lapin::PublisherConfirm, tracing::Span)> =
            VecDeque::new();
        let mut confirms = Confirms::default();
        let unknown = |pending: &VecDeque<(usize, _, _)>, rest: &[usize]| -> Vec<usize> {
            pending
                .iter()
                .map(|p| p.0)
                .chain(rest.iter().copied())
                .collect()
        };
        for (n, &i) in todo.iter().enumerate() {
            while pending.len() >= self.window {
                let Some((index, confirm, _span)) = pending.pop_front() else {
                    break;
                };
                if let Err(e) = settle(index, confirm, events, results, &mut confirms).await {
                    let mut lost = vec![index];
                    lost.extend(unknown(&pending, &todo[n..]));
                    return Err((e, lost));
                }
                on_confirmed(index);
            }
            let span = producer_span(self.settings, &events[i]);
            match self.publish(&events[i], &span).await {
                Ok(confirm) => pending.push_back((i, confirm, span)),
                Err(e) => return Err((e, unknown(&pending, &todo[n..]))),
            }
        }
        while let Some((index, confirm, _span)) = pending.pop_front() {
            if let Err(e) = settle(index, confirm, events, results, &mut confirms).await {
                let mut lost = vec![index];
                lost.extend(unknown(&pending, &[]));
                return Err((e, lost));
            }
            on_confirmed(index);
        }
        attribute_returns(events, confirms, results, &self.settings.exchange);
        Ok(())
    }

    async fn publish(
        &self,
        event: &OutgoingEvent,
        span: &tracing::Span,
    ) -> Result<lapin::PublisherConfirm, PublishError> {
        let mut headers = event.headers.clone();
        inject_trace_context(span, &mut headers);
        let mut table = FieldTable::default();
        for (name, value) in &headers {
            table.insert(
                short(name)?,
                AMQPValue::LongString(LongString::from(value.as_str())),
            );
        }
        let properties = BasicProperties::default()
            .with_content_type(short("application/json")?)
            .with_delivery_mode(2)
            .with_message_id(short(&event.event_id)?)
            .with_headers(table);
        self.channel
            .basic_publish(
                short(&self.settings.exchange)?,
                short(&event.routing_key())?,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &event.body,
                properties,
            )
            .await
            .map_err(|e| PublishError::from(classify(e)))
    }
}

/// Awaits one confirm. A nack fails that event at once (nacks are per delivery tag, so exact);
/// an ack waits for the end of the round, when returns are matched to events.
async fn settle(
    index: usize,
    confirm: lapin::PublisherConfirm,
    events: &[OutgoingEvent],
    results: &mut [Option<Result<(), PublishError>>],
    confirms: &mut Confirms,
) -> Result<(), PublishError> {
    match confirm.await.map_err(|e| PublishError::from(classify(e)))? {
        Confirmation::Ack(returned) => {
            confirms.acked.push(index);
            confirms.returned.extend(returned);
        }
        Confirmation::Nack(returned) => {
            confirms.returned.extend(returned);
            results[index] = Some(Err(PublishError::Refused {
                event_id: events[index].event_id.clone(),
            }));
        }
        Confirmation::NotRequested => {
            results[index] = Some(Err(PublishError::Unavailable(
                "publisher confirms are not enabled on the channel".into(),
            )));
        }
    }
    Ok(())
}

/// lapin hands a `basic.return` to whichever confirm completes next, not necessarily its own
/// message's, so returns are matched to acked events by message id (= event id) and routing key.
/// Events sharing both are interchangeable for routing, so the count of failures is exact.
fn attribute_returns(
    events: &[OutgoingEvent],
    confirms: Confirms,
    results: &mut [Option<Result<(), PublishError>>],
    exchange: &str,
) {
    let mut acked = confirms.acked;
    for message in confirms.returned {
        let id = message.properties.message_id().as_ref().map(|m| m.as_str());
        let key = message.routing_key.as_str();
        let found = acked.iter().position(|&i| {
            Some(events[i].event_id.as_str()) == id && events[i].routing_key() == key
        });
        match found {
            Some(pos) => {
                let i = acked.swap_remove(pos);
                results[i] = Some(Err(PublishError::Unroutable {
                    event_id: events[i].event_id.clone(),
                    exchange: exchange.to_owned(),
                    routing_key: events[i].routing_key(),
                }));
            }
            None => tracing::warn!(
                message_id = ?id,
                routing_key = key,
                "RabbitMQ returned a message this batch did not send"
            ),
        }
    }
    for i in acked {
        results[i] = Some(Ok(()));
    }
}

/// A producer span per event (messaging semantic conventions); its context is what consumers
/// continue from.
fn producer_span(settings: &AmqpSettings, event: &OutgoingEvent) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = %format!("publish {}", settings.exchange),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "publish",
        messaging.destination.name = %settings.exchange,
        messaging.rabbitmq.destination.routing_key = %event.routing_key(),
        messaging.message.id = %event.event_id,
    )
}

/// Injects the span's W3C context through the global propagator (a no-op until telemetry
/// installs one). A `traceparent` the caller set wins: it is their trace.
fn inject_trace_context(span: &tracing::Span, headers: &mut BTreeMap<String, String>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if headers.contains_key("traceparent") {
        return;
    }
    struct HeaderInjector<'a>(&'a mut BTreeMap<String, String>);
    impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_ascii_lowercase(), value);
        }
    }
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}
