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
//!
//! - this file: [`Publisher`], [`OutgoingEvent`], [`PublishError`].
//! - `batch`: one windowed pass of confirms over a channel, and matching returns to events.
//! - `command`: `bidorch publish [FILE|-]` ([`run_publish_command`]).

mod batch;
mod command;

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::{Channel, Connection};
use tokio::sync::Mutex;

use self::batch::Round;
pub use self::command::{PublishFailure, PublishOptions, PublishSummary, run_publish_command};
use crate::amqp::connection::{confirm_channel, open_connection};
use crate::amqp::{AmqpError, topology};
use crate::config::AmqpSettings;
use crate::posting::{Posting, PostingError};

/// How often a batch is re-sent after losing its connection before its unconfirmed events fail.
const MAX_RESENDS: u32 = 3;

/// A publishing failure.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid posting event")]
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
    #[error("broker unreachable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("broker topology: {0}")]
    Topology(String),
    #[error("reading the input")]
    Input(#[from] std::io::Error),
}

impl PublishError {
    /// Whether trying again later may succeed (the broker was unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<AmqpError> for PublishError {
    fn from(e: AmqpError) -> Self {
        match e {
            AmqpError::Topology(msg) => Self::Topology(msg),
            other => Self::Unavailable(Box::new(other)),
        }
    }
}

/// A validated event, ready to publish.
#[derive(Clone, Debug)]
pub struct OutgoingEvent {
    body: Vec<u8>,
    event_id: String,
    marketplace: String,
    /// `marketplace:posting_id`.
    key: String,
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
            key: posting.key.to_string(),
            body,
            headers: BTreeMap::new(),
        })
    }

    /// The posting's `marketplace:posting_id`.
    pub fn posting_key(&self) -> String {
        self.key.clone()
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
                        error = %crate::error::Chain(&e),
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
        Ok::<_, AmqpError>(Session {
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
        .when(|e: &AmqpError| !matches!(e, AmqpError::Topology(_)))
        .notify(|e: &AmqpError, after: Duration| {
            tracing::warn!(error = %crate::error::Chain(e), retry_in = ?after, "Cannot reach RabbitMQ to publish; retrying");
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
}
