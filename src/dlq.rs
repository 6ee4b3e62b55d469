//! The parking lot: `bidorch dlq list` and `bidorch dlq replay`.
//!
//! Both take messages from `{queue}.dead` with `basic.get` WITHOUT acking them, and hand back
//! whatever they do not consume with a requeueing nack: the dead-letter queue is a classic queue
//! (see `amqp::topology`), which puts returned messages back in their original position,
//! so looking never loses or reorders anything. A replayed message is published again (confirmed,
//! `mandatory`) to the work exchange with its attempt count reset, and only then acked out of the
//! parking lot. Replay works through a snapshot of the queue length, so a message parked again
//! while the replay runs is not replayed in a loop.

use std::collections::BTreeMap;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection};

use crate::amqp::AmqpError;
use crate::amqp::confirm::publish_confirmed;
use crate::amqp::connection::{classify, confirm_channel, open_connection, short};
use crate::amqp::headers::{
    copy_headers, copy_properties, read_attempt, read_number, string_headers,
};
use crate::config::AmqpSettings;
use crate::source::{ATTEMPT_HEADER, DETAIL_HEADER, FIRST_SEEN_HEADER, REASON_HEADER};

/// Header a replayed message carries: the reason it had been parked for. For the record only,
/// so outside the `x-bidorch-*` namespace that the worker trusts only from its own wait queues.
pub const REPLAYED_REASON_HEADER: &str = "bidorch-replayed-reason";

/// A dead-letter queue failure.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] AmqpError),
    #[error("replay stopped after {replayed} message(s)")]
    Replay {
        replayed: usize,
        #[source]
        source: AmqpError,
    },
}

/// One parked message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedMessage {
    /// The AMQP message id (the publisher sets it to the event id), else the body's `event_id`.
    pub event_id: Option<String>,
    /// `x-bidorch-reason`, or the broker's own (`delivery_limit`, `expired`, …).
    pub reason: String,
    pub detail: Option<String>,
    pub attempt: u32,
    /// String headers, lower-cased (trace context, reasons, rendered `x-death`).
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// When bidorch first took the message (`x-bidorch-first-seen`, set when parking), else
    /// when it was published (the `timestamp` property), if either says.
    pub first_seen: Option<chrono::DateTime<chrono::Utc>>,
}

/// What `dlq list` saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DlqListing {
    /// Messages in the dead-letter queue when listing started.
    pub total: u32,
    /// The first `limit` of them, oldest first.
    pub messages: Vec<ParkedMessage>,
}

/// Which parked messages to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayFilter {
    All,
    EventId(String),
    /// Those parked for this reason (`max_attempts`, `delivery_limit`, …).
    Reason(String),
}

impl ReplayFilter {
    /// Whether `message` is one to replay.
    pub fn matches(&self, message: &ParkedMessage) -> bool {
        match self {
            Self::All => true,
            Self::EventId(wanted) => message.event_id.as_deref() == Some(wanted.as_str()),
            Self::Reason(wanted) => message.reason == *wanted,
        }
    }
}

/// What `dlq replay` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Event ids (or `?` when unknown) republished to the work exchange, in order.
    pub replayed: Vec<String>,
    /// Messages looked at and left in place.
    pub kept: usize,
    /// Event ids (or `?`) of matching messages left in place because bidorch first saw them
    /// longer ago than `ledger.retention`: their ledger rows may be pruned, so a replay could
    /// bid on them a second time. Counted in `kept` too.
    pub beyond_retention: Vec<String>,
}

/// How long closing the channel and the connection may take before the command moves on.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

struct Session {
    connection: Connection,
    channel: Channel,
}

impl Session {
    async fn open(settings: &AmqpSettings) -> Result<(Self, u32), AmqpError> {
        let connection = open_connection(settings, "bidorch-dlq").await?;
        let channel = connection.create_channel().await.map_err(classify)?;
        let total = crate::amqp::topology::message_count(&channel, &settings.dead_letter_queue())
            .await
            .map_err(|e| match e {
                AmqpError::Topology(_) => AmqpError::Topology(format!(
                    "no dead-letter queue `{}` (has a worker declared the topology?)",
                    settings.dead_letter_queue()
                )),
                other => other,
            })?;
        Ok((
            Self {
                connection,
                channel,
            },
            total,
        ))
    }

    async fn get(&self, queue: &str) -> Result<Option<lapin::message::Delivery>, AmqpError> {
        let got = self
            .channel
            .basic_get(short(queue)?, BasicGetOptions { no_ack: false })
            .await
            .map_err(classify)?;
        Ok(got.map(|m| m.delivery))
    }

    /// Hands back every message taken and not acked (up to and including `handed_back`, which
    /// must still be outstanding), then closes. Closing is bounded: a broker that never answers
    /// the close must not hang the command, and an unanswered close requeues all the same.
    async fn finish(self, handed_back: Option<u64>) {
        if let Some(tag) = handed_back {
            let requeue = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            if let Err(e) = self.channel.basic_nack(tag, requeue).await {
                // Closing the channel below requeues them as well.
                tracing::debug!(error = %crate::error::Chain(&e), "Requeueing nack failed");
            }
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, self.channel.close(200, "OK".into())).await;
        let _ = tokio::time::timeout(CLOSE_WAIT, self.connection.close(200, "OK".into())).await;
    }
}

fn parked(message: &lapin::message::Delivery) -> ParkedMessage {
    let table = message.properties.headers().clone().unwrap_or_default();
    let headers = string_headers(&table);
    let reason = headers
        .get(REASON_HEADER)
        .or_else(|| headers.get("x-first-death-reason"))
        .cloned()
        .unwrap_or_else(|| "unknown".to_owned());
    let message_id = message
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned());
    ParkedMessage {
        event_id: message_id.or_else(|| body_event_id(&message.data)),
        reason,
        detail: headers.get(DETAIL_HEADER).cloned(),
        attempt: read_attempt(&table),
        first_seen: read_number(&table, FIRST_SEEN_HEADER)
            .and_then(|ms| i64::try_from(ms).ok())
            .and_then(chrono::DateTime::from_timestamp_millis)
            .or_else(|| {
                let secs = message.properties.timestamp().as_ref().copied()?;
                chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)
            }),
        headers,
        body: message.data.clone(),
    }
}

/// Peeks at up to `limit` parked messages, oldest first, leaving all of them in place and in order.
pub async fn list(settings: &AmqpSettings, limit: usize) -> Result<DlqListing, DlqError> {
    let (session, total) = Session::open(settings).await?;
    let queue = settings.dead_letter_queue();
    let mut messages = Vec::new();
    let mut last_tag = None;
    let mut outcome = Ok(());
    while messages.len() < limit.min(total as usize) {
        match session.get(&queue).await {
            Ok(Some(m)) => {
                last_tag = Some(m.delivery_tag);
                messages.push(parked(&m));
            }
            Ok(None) => break,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    session.finish(last_tag).await;
    outcome?;
    Ok(DlqListing { total, messages })
}

/// The body's `event_id`, for a message published without a message id.
fn body_event_id(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("event_id")?
        .as_str()
        .map(str::to_owned)
}

/// `posting.{marketplace}` when the body names a valid marketplace; poison without one goes
/// straight to the work queue (the worker parks it again, with a fresh reason).
fn route(settings: &AmqpSettings, body: &[u8]) -> (String, String) {
    let marketplace = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("marketplace")?.as_str().map(str::to_owned))
        .filter(|m| crate::posting::PostingKey::new(m, "x").is_ok());
    match marketplace {
        Some(m) => (settings.exchange.clone(), format!("posting.{m}")),
        None => (String::new(), settings.queue.clone()),
    }
}

/// Republishes the parked messages matching `filter` to the work exchange, attempts reset, and
/// removes each from the parking lot once its copy is confirmed. Others stay, in order.
///
/// A message bidorch first saw longer ago than `retention` is left parked and reported
/// ([`ReplaySummary::beyond_retention`]); one that does not say when is replayed (a dated
/// posting is then skipped by its `posted_at`).
pub async fn replay(
    settings: &AmqpSettings,
    filter: &ReplayFilter,
    retention: std::time::Duration,
) -> Result<ReplaySummary, DlqError> {
    let cutoff = crate::retention::cutoff(retention);
    let (session, total) = Session::open(settings).await?;
    let publish = match confirm_channel(&session.connection).await {
        Ok(channel) => channel,
        Err(e) => {
            session.finish(None).await;
            return Err(e.into());
        }
    };
    let queue = settings.dead_letter_queue();
    let mut summary = ReplaySummary::default();
    // The latest delivery taken and neither acked nor lost with the channel: the requeueing nack
    // must name one still outstanding, or the broker closes the channel with "unknown delivery tag".
    let mut handed_back = None;
    let mut failure = None;
    for _ in 0..total {
        let message = match session.get(&queue).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let view = parked(&message);
        if !filter.matches(&view) {
            handed_back = Some(message.delivery_tag);
            summary.kept += 1;
            continue;
        }
        if view.first_seen.is_some_and(|t| t < cutoff) {
            handed_back = Some(message.delivery_tag);
            summary.kept += 1;
            summary
                .beyond_retention
                .push(view.event_id.clone().unwrap_or_else(|| "?".to_owned()));
            continue;
        }
        if let Err(e) = republish(settings, &publish, &message, &view).await {
            handed_back = Some(message.delivery_tag);
            failure = Some(e);
            break;
        }
        match message.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => summary
                .replayed
                .push(view.event_id.clone().unwrap_or_else(|| "?".to_owned())),
            Ok(false) => {
                failure = Some(AmqpError::ChannelClosed);
                break;
            }
            Err(e) => {
                failure = Some(classify(e));
                break;
            }
        }
    }
    session.finish(handed_back).await;
    match failure {
        None => Ok(summary),
        Some(source) => Err(DlqError::Replay {
            replayed: summary.replayed.len(),
            source,
        }),
    }
}

async fn republish(
    settings: &AmqpSettings,
    channel: &Channel,
    message: &lapin::message::Delivery,
    view: &ParkedMessage,
) -> Result<(), AmqpError> {
    // A fresh start: no attempt count, no parking reason; the old reason is kept for the record.
    let mut strings = view.headers.clone();
    strings.remove(REASON_HEADER);
    strings.remove(DETAIL_HEADER);
    strings.remove(ATTEMPT_HEADER);
    // The attempt header is an integer, which `copy_headers` keeps: drop it here.
    let mut headers: FieldTable = copy_headers(&message.properties, &strings)
        .inner()
        .iter()
        .filter(|(name, _)| !name.as_str().eq_ignore_ascii_case(ATTEMPT_HEADER))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect::<BTreeMap<_, _>>()
        .into();
    headers.insert(
        short(REPLAYED_REASON_HEADER)?,
        AMQPValue::LongString(LongString::from(view.reason.as_str())),
    );
    let properties = copy_properties(&message.properties, headers);
    let (exchange, routing_key) = route(settings, &message.data);
    publish_confirmed(channel, &exchange, &routing_key, &message.data, properties).await
}
