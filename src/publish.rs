//! Publishing posting events: the library API other Rust services use, and `bidorch publish`.
//!
//! Every event is validated with [`Posting::parse`] before it is sent (the publisher does not know
//! which marketplaces a deployment bids on, so any well-formed marketplace passes), then published
//! to `amqp.exchange` with routing key `posting.{marketplace}`, `content_type: application/json`,
//! `delivery_mode: 2`, `message_id` = `event_id`, and the W3C trace context of a producer span
//! (`traceparent`/`tracestate`) unless the caller supplied its own.
//!
//! Delivery is confirmed, not hoped for: publishes are `mandatory` on a confirm-mode channel, and
//! an event counts as published only when the broker acked it AND did not return it (a confirm
//! alone also arrives for a message no queue took). Up to `amqp.publish_window` events are in
//! flight at once. A lost connection is re-established with backoff and the unconfirmed events
//! are sent again — at-least-once, which consumers absorb through the ledger.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::Mutex;

use crate::config::AmqpSettings;
use crate::posting::{Posting, PostingError};
use crate::source::SourceError;
use crate::source::amqp::{confirm_channel, from_lapin, open_connection, short, topology};

/// How often a batch is re-sent after losing its connection before its unconfirmed events fail.
const MAX_RESENDS: u32 = 3;
/// Inputs at least this long get a progress bar (when asked for and stderr is a terminal).
const PROGRESS_THRESHOLD: usize = 100;

/// A publishing failure.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid posting event: {0}")]
    Invalid(#[source] PostingError),
    #[error("line {line}: {error} ({count} invalid line(s) in total; nothing was sent)")]
    InvalidLines {
        /// The first bad line (1-based).
        line: usize,
        error: PostingError,
        count: usize,
        /// Every bad line with its problem.
        all: Vec<(usize, PostingError)>,
    },
    #[error(
        "event {event_id} is unroutable: exchange `{exchange}` has no queue bound for `{routing_key}` \
         (is a worker's topology declared?)"
    )]
    Unroutable {
        event_id: String,
        exchange: String,
        routing_key: String,
    },
    #[error("the broker refused event {event_id} (negative publisher confirm)")]
    Refused { event_id: String },
    #[error("broker unreachable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("broker topology: {0}")]
    Topology(String),
    #[error("reading the input: {0}")]
    Input(#[from] std::io::Error),
}

impl PublishError {
    /// Whether trying again later may succeed (the broker was unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<SourceError> for PublishError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Topology(msg) => Self::Topology(msg),
            SourceError::Refused(msg) => Self::Unavailable(msg.into()),
            SourceError::ChannelClosed => Self::Unavailable("the channel closed".into()),
            SourceError::Unavailable(inner) => Self::Unavailable(inner),
        }
    }
}

/// A validated event, ready to publish.
#[derive(Clone, Debug)]
pub struct OutgoingEvent {
    body: Vec<u8>,
    event_id: String,
    marketplace: String,
    headers: BTreeMap<String, String>,
}

impl OutgoingEvent {
    /// Validates `body` as a posting event (any well-formed marketplace).
    pub fn parse(body: impl Into<Vec<u8>>) -> Result<Self, PostingError> {
        let body = body.into();
        let posting = Posting::parse(&body, |_| true)?;
        Ok(Self {
            event_id: posting.event_id,
            marketplace: posting.key.marketplace().to_owned(),
            body,
            headers: BTreeMap::new(),
        })
    }

    /// Adds an AMQP header, e.g. `traceparent`/`tracestate` from the caller's own span.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .insert(name.to_ascii_lowercase(), value.to_owned());
        self
    }

    /// The event id (also the AMQP `message_id`).
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// `posting.{marketplace}`.
    pub fn routing_key(&self) -> String {
        format!("posting.{}", self.marketplace)
    }

    /// The raw body, as it will be sent.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// A connection and its confirm channel.
struct Session {
    connection: Connection,
    channel: Channel,
}

/// Publishes posting events with confirms. One channel; `publish*` calls are serialised on it so
/// returned (unroutable) messages are attributed exactly — use [`Publisher::publish_many`] for
/// throughput, it keeps `amqp.publish_window` events in flight.
pub struct Publisher {
    settings: AmqpSettings,
    /// The AMQP connection name (`bidorch-publisher-{random}`), as the broker lists it.
    name: String,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("url", &self.settings.url)
            .field("exchange", &self.settings.exchange)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects (retrying with backoff for up to `amqp.reconnect_timeout`) and declares the
    /// exchange, so publishers may start before any worker.
    pub async fn connect(settings: &AmqpSettings) -> Result<Self, PublishError> {
        let name = format!(
            "bidorch-publisher-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let session = open_session(settings, &name).await?;
        Ok(Self {
            settings: settings.clone(),
            name,
            session: Mutex::new(Some(session)),
        })
    }

    /// The connection name the broker shows for this publisher (`rabbitmqctl list_connections`).
    pub fn connection_name(&self) -> &str {
        &self.name
    }

    /// Validates and publishes one event; `Ok` once the broker confirmed it was routed.
    pub async fn publish(&self, event: &[u8]) -> Result<(), PublishError> {
        self.publish_with_headers(event, &BTreeMap::new()).await
    }

    /// [`publish`](Self::publish) with extra AMQP headers (e.g. the caller's `traceparent`).
    pub async fn publish_with_headers(
        &self,
        event: &[u8],
        headers: &BTreeMap<String, String>,
    ) -> Result<(), PublishError> {
        let mut outgoing = OutgoingEvent::parse(event).map_err(PublishError::Invalid)?;
        for (name, value) in headers {
            outgoing = outgoing.with_header(name, value);
        }
        self.publish_event(&outgoing).await
    }

    /// Publishes one validated event.
    pub async fn publish_event(&self, event: &OutgoingEvent) -> Result<(), PublishError> {
        let mut results = self.publish_many(std::slice::from_ref(event)).await;
        results.pop().unwrap_or(Ok(()))
    }

    /// Publishes `events` with up to `amqp.publish_window` in flight; one result per event, in
    /// order. An `Err` event may still have reached the broker if its confirm was lost with the
    /// connection; publishing it again is safe (consumers deduplicate).
    pub async fn publish_many(&self, events: &[OutgoingEvent]) -> Vec<Result<(), PublishError>> {
        self.publish_many_with(events, |_| {}).await
    }

    /// [`publish_many`](Self::publish_many), calling `on_confirmed(index)` as each event's
    /// confirm arrives (for progress reporting).
    pub async fn publish_many_with(
        &self,
        events: &[OutgoingEvent],
        mut on_confirmed: impl FnMut(usize),
    ) -> Vec<Result<(), PublishError>> {
        let mut results: Vec<Option<Result<(), PublishError>>> =
            events.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..events.len()).collect();
        let mut guard = self.session.lock().await;
        let mut resends = 0;
        while !todo.is_empty() {
            if guard.is_none() {
                match open_session(&self.settings, &self.name).await {
                    Ok(session) => *guard = Some(session),
                    Err(e) => {
                        fail_all(&mut results, &todo, &e);
                        break;
                    }
                }
            }
            let Some(session) = guard.as_ref() else { break };
            let round = Round {
                channel: &session.channel,
                settings: &self.settings,
                window: self.settings.publish_window.max(1),
            };
            match round
                .send(events, &todo, &mut results, &mut on_confirmed)
                .await
            {
                Ok(()) => todo.clear(),
                Err((e, unsettled)) => {
                    if let Some(dead) = guard.take() {
                        let _ = dead
                            .connection
                            .close(320, "bidorch reconnecting".into())
                            .await;
                    }
                    resends += 1;
                    if !e.is_retryable() || resends > MAX_RESENDS {
                        fail_all(&mut results, &unsettled, &e);
                        break;
                    }
                    tracing::warn!(
                        error = %e,
                        unconfirmed = unsettled.len(),
                        "Publishing lost its RabbitMQ channel; reconnecting to send the rest again"
                    );
                    todo = unsettled;
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(PublishError::Unavailable("not sent".into()))))
            .collect()
    }

    /// Closes the connection.
    pub async fn close(self) {
        if let Some(session) = self.session.into_inner() {
            let _ = session.connection.close(200, "OK".into()).await;
        }
    }
}

fn fail_all(
    results: &mut [Option<Result<(), PublishError>>],
    indexes: &[usize],
    error: &PublishError,
) {
    for &i in indexes {
        results[i] = Some(Err(match error {
            PublishError::Topology(m) => PublishError::Topology(m.clone()),
            other => PublishError::Unavailable(other.to_string().into()),
        }));
    }
}

async fn open_session(settings: &AmqpSettings, name: &str) -> Result<Session, PublishError> {
    let attempt = || async {
        let connection = open_connection(settings, name).await?;
        let channel = confirm_channel(&connection).await?;
        topology::declare_exchange(&channel, settings).await?;
        Ok::<_, SourceError>(Session {
            connection,
            channel,
        })
    };
    let retried = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times(),
        )
        .sleep(tokio::time::sleep)
        .when(|e: &SourceError| !matches!(e, SourceError::Topology(_)))
        .notify(|e: &SourceError, after: Duration| {
            tracing::warn!(error = %e, retry_in = ?after, "Cannot reach RabbitMQ to publish; retrying");
        });
    match tokio::time::timeout(settings.reconnect_timeout, retried).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PublishError::Unavailable(
            format!(
                "could not connect to {} within amqp.reconnect_timeout ({})",
                settings.url.redacted(),
                humantime::format_duration(settings.reconnect_timeout)
            )
            .into(),
        )),
    }
}

/// One pass of a batch over one channel.
struct Round<'a> {
    channel: &'a Channel,
    settings: &'a AmqpSettings,
    window: usize,
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
    async fn send(
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
            .map_err(|e| PublishError::from(from_lapin(e)))
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
    match confirm
        .await
        .map_err(|e| PublishError::from(from_lapin(e)))?
    {
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

/// One event that did not make it, with its input line.
#[derive(Debug)]
pub struct PublishFailure {
    pub line: usize,
    pub event_id: String,
    pub error: PublishError,
}

/// What `bidorch publish` did.
#[derive(Debug, Default)]
pub struct PublishSummary {
    /// Events confirmed as routed by the broker.
    pub published: usize,
    /// Events not confirmed (see `failures`); re-publishing them is safe.
    pub failed: usize,
    pub failures: Vec<PublishFailure>,
}

impl PublishSummary {
    /// Whether every event was published.
    pub fn is_complete(&self) -> bool {
        self.failed == 0
    }
}

impl std::fmt::Display for PublishSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "published {}, failed {}", self.published, self.failed)?;
        for failure in &self.failures {
            write!(
                f,
                "\n  line {} (event {}): {}",
                failure.line, failure.event_id, failure.error
            )?;
        }
        Ok(())
    }
}

/// `bidorch publish [FILE|-]`: reads JSON lines (blank lines skipped), validates ALL of them
/// before sending anything — a bad line is an error naming its line number and nothing is sent —
/// then publishes with confirms, a progress bar on long inputs when `progress` is set, and
/// returns the summary. Failures after validation (unroutable, refused, connection lost for good)
/// are in the summary with their line numbers, never silent.
pub async fn run_publish_command(
    settings: &AmqpSettings,
    mut input: impl AsyncBufRead + Unpin,
    progress: bool,
) -> Result<PublishSummary, PublishError> {
    let mut events = Vec::new();
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf).await? == 0 {
            break;
        }
        line += 1;
        let text = buf.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match OutgoingEvent::parse(text) {
            Ok(event) => {
                events.push(event);
                lines.push(line);
            }
            Err(e) => bad.push((line, e)),
        }
    }
    if let Some((first_line, first_error)) = bad.first().cloned() {
        return Err(PublishError::InvalidLines {
            line: first_line,
            error: first_error,
            count: bad.len(),
            all: bad,
        });
    }
    if events.is_empty() {
        return Ok(PublishSummary::default());
    }

    let bar = if progress && events.len() >= PROGRESS_THRESHOLD {
        let bar = indicatif::ProgressBar::new(events.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} confirmed [{bar:40}] {per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let publisher = Publisher::connect(settings).await?;
    let results = publisher.publish_many_with(&events, |_| bar.inc(1)).await;
    publisher.close().await;
    bar.finish_and_clear();

    let mut summary = PublishSummary::default();
    for ((result, event), line) in results.into_iter().zip(&events).zip(lines) {
        match result {
            Ok(()) => summary.published += 1,
            Err(error) => {
                summary.failed += 1;
                summary.failures.push(PublishFailure {
                    line,
                    event_id: event.event_id.clone(),
                    error,
                });
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_events_are_validated_and_routed_by_marketplace() {
        let body = br#"{"event_id":"e1","marketplace":"upwork","posting_id":"p1","title":"T"}"#;
        let event = OutgoingEvent::parse(&body[..])
            .unwrap()
            .with_header("TraceParent", "00-x-y-01");
        assert_eq!(event.event_id(), "e1");
        assert_eq!(event.routing_key(), "posting.upwork");
        assert_eq!(event.headers["traceparent"], "00-x-y-01");
        // Any well-formed marketplace passes: the publisher does not know the deployment's list.
        let other = br#"{"event_id":"e2","marketplace":"brand-new","posting_id":"p","title":"T"}"#;
        assert!(OutgoingEvent::parse(&other[..]).is_ok());
        assert!(OutgoingEvent::parse(&b"{"[..]).is_err());
        let no_title = br#"{"event_id":"e3","marketplace":"upwork","posting_id":"p"}"#;
        assert!(OutgoingEvent::parse(&no_title[..]).is_err());
    }

    #[tokio::test]
    async fn a_bad_line_is_named_and_nothing_is_sent() {
        // The URL points nowhere: validation must fail before any connection is attempted.
        let settings = crate::config::Settings::load_from(None, &Default::default())
            .expect("defaults")
            .amqp;
        let mut settings = settings;
        settings.url = crate::config::SecretUrl::new("amqp://nobody:secret@127.0.0.1:1/%2f");
        let input = concat!(
            r#"{"event_id":"e1","marketplace":"upwork","posting_id":"p1","title":"T"}"#,
            "\n\n",
            r#"{"event_id":"e2","marketplace":"upwork","posting_id":"p2"}"#,
            "\nnot json\n"
        );
        let err = run_publish_command(&settings, input.as_bytes(), false)
            .await
            .unwrap_err();
        match &err {
            PublishError::InvalidLines {
                line, count, all, ..
            } => {
                assert_eq!(*line, 3);
                assert_eq!(*count, 2);
                assert_eq!(all[1].0, 4);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().starts_with("line 3:"), "{err}");
    }
}
