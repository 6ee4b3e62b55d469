//! The source port: deliveries of posting events and how each one is settled.
//!
//! A [`Delivery`] must be settled exactly once — [`ack`](Delivery::ack) after the ledger has the
//! outcome, [`retry`](Delivery::retry) with a delay, or [`dead_letter`](Delivery::dead_letter)
//! with a reason. Dropping one unsettled leaves it to the source to redeliver (RabbitMQ does when
//! the channel closes), so a crash loses nothing.

mod amqp;
pub mod memory;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use self::amqp::AmqpPostingSource;
pub use self::memory::{MemoryPostingSource, MemoryQueue};

pub use crate::envelope::{
    ATTEMPT_HEADER, DETAIL_HEADER, FIRST_SEEN_HEADER, NOT_BEFORE_HEADER, REASON_HEADER,
    from_unix_ms, is_own_header, unix_ms,
};

/// One message taken from a source, not yet settled.
pub struct Delivery {
    /// The raw event body.
    pub body: Vec<u8>,
    /// 1-based attempt number from [`ATTEMPT_HEADER`]: 1 + the posting's own failures so far.
    pub attempt: u32,
    /// Whether the broker says it delivered this message before (e.g. after a crash).
    pub redelivered: bool,
    /// The message id (the publisher sets it to `event_id`).
    pub message_id: Option<String>,
    /// String-valued headers of interest (trace context, reason), lower-case names; bidorch's own
    /// only when trusted (the message came back through our wait queues).
    pub headers: BTreeMap<String, String>,
    /// When bidorch first took this message ([`FIRST_SEEN_HEADER`], else now).
    pub first_seen: SystemTime,
    /// Not to be worked on before this time ([`NOT_BEFORE_HEADER`]).
    pub not_before: Option<SystemTime>,
    /// How to settle this delivery with its source.
    pub settler: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("attempt", &self.attempt)
            .field("redelivered", &self.redelivered)
            .field("message_id", &self.message_id)
            .field("first_seen", &self.first_seen)
            .field("not_before", &self.not_before)
            .finish_non_exhaustive()
    }
}

/// Reads bidorch's envelope headers from a trusted header map: attempt, first seen, not before.
pub fn envelope(
    headers: &BTreeMap<String, String>,
) -> (u32, Option<SystemTime>, Option<SystemTime>) {
    let number = |name: &str| headers.get(name).and_then(|v| v.trim().parse::<u64>().ok());
    let attempt = number(ATTEMPT_HEADER)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1);
    let first_seen = number(FIRST_SEEN_HEADER).and_then(from_unix_ms);
    let not_before = number(NOT_BEFORE_HEADER).and_then(from_unix_ms);
    (attempt, first_seen, not_before)
}

impl Delivery {
    /// Removes the message: its outcome is recorded.
    pub async fn ack(self) -> Result<(), SourceError> {
        self.settler.ack().await
    }

    /// Schedules the message again after about `delay`; `counts` says whether this was one of
    /// the posting's own failures (attempt + 1) or only a wait (same attempt).
    pub async fn retry(
        self,
        delay: Duration,
        reason: &str,
        counts: bool,
    ) -> Result<(), SourceError> {
        let not_before = SystemTime::now().checked_add(delay);
        let next_attempt = if counts {
            self.attempt.saturating_add(1)
        } else {
            self.attempt
        };
        self.settler
            .retry(Requeue {
                body: self.body,
                next_attempt,
                headers: self.headers,
                delay,
                reason: reason.to_owned(),
                first_seen: self.first_seen,
                not_before,
            })
            .await
    }

    /// Parks the message in the dead-letter queue with a reason; never redelivered by itself.
    pub async fn dead_letter(self, reason: &str, detail: &str) -> Result<(), SourceError> {
        let (body, attempt, headers) = (self.body, self.attempt, self.headers);
        self.settler
            .dead_letter(Parked {
                body,
                attempt,
                headers,
                first_seen: self.first_seen,
                reason: reason.to_owned(),
                detail: detail.to_owned(),
            })
            .await
    }
}

/// A message to send back for a later attempt.
#[derive(Debug, Clone)]
pub struct Requeue {
    pub body: Vec<u8>,
    pub next_attempt: u32,
    pub headers: BTreeMap<String, String>,
    pub delay: Duration,
    pub reason: String,
    /// Carried along: the retry budget runs from the first time bidorch saw the message.
    pub first_seen: SystemTime,
    /// When the wait is over (`now + delay`); `None` only if that is not representable.
    pub not_before: Option<SystemTime>,
}

impl Requeue {
    /// The string headers of the copy: the caller's, with bidorch's envelope set.
    pub fn envelope_headers(&self) -> BTreeMap<String, String> {
        let mut headers = self.headers.clone();
        headers.insert(ATTEMPT_HEADER.to_owned(), self.next_attempt.to_string());
        headers.insert(REASON_HEADER.to_owned(), self.reason.clone());
        headers.insert(
            FIRST_SEEN_HEADER.to_owned(),
            unix_ms(self.first_seen).to_string(),
        );
        match self.not_before {
            Some(t) => headers.insert(NOT_BEFORE_HEADER.to_owned(), unix_ms(t).to_string()),
            None => headers.remove(NOT_BEFORE_HEADER),
        };
        headers
    }
}

/// A message to park in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct Parked {
    pub body: Vec<u8>,
    pub attempt: u32,
    pub headers: BTreeMap<String, String>,
    /// When bidorch first took the message: `dlq replay` leaves a message parked longer ago
    /// than `ledger.retention` where it is.
    pub first_seen: SystemTime,
    pub reason: String,
    pub detail: String,
}

/// Settles one delivery with the source it came from. Each method consumes the settler.
#[async_trait]
pub trait Settle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), SourceError>;
    /// Publishes the copy for a later attempt, then removes the original.
    async fn retry(self: Box<Self>, requeue: Requeue) -> Result<(), SourceError>;
    /// Publishes the copy to the dead-letter queue, then removes the original.
    async fn dead_letter(self: Box<Self>, parked: Parked) -> Result<(), SourceError>;
}

/// A source failure. Settling errors leave the delivery unsettled, so it is redelivered.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source cannot be reached; trying again later may work.
    #[error("the posting source is unreachable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The delivery's consumer is gone (e.g. its channel closed): the source redelivers it.
    #[error("the delivery can no longer be settled; it will be redelivered")]
    Unsettled,
    /// The source refused to take a copy (retry or dead letter).
    #[error("the posting source refused the message: {0}")]
    Refused(String),
    /// The source's queues cannot be declared as configured.
    #[error("posting source topology: {0}")]
    Topology(String),
}

impl From<crate::amqp::AmqpError> for SourceError {
    fn from(e: crate::amqp::AmqpError) -> Self {
        use crate::amqp::AmqpError;
        match e {
            AmqpError::ChannelClosed => Self::Unsettled,
            AmqpError::Refused(m) => Self::Refused(m),
            AmqpError::Topology(m) => Self::Topology(m),
            unavailable @ AmqpError::Unavailable(_) => Self::Unavailable(Box::new(unavailable)),
        }
    }
}

/// What a source's consumer is doing right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerState {
    /// Connecting for the first time.
    Starting,
    /// Subscribed and receiving deliveries.
    Consuming,
    /// The connection, channel or subscription was lost; re-establishing it.
    Reconnecting,
    /// Stopped on request (shutdown): no new deliveries, by design.
    Stopped,
    /// Gave up reconnecting: the process should exit non-zero so an orchestrator restarts it.
    Failed,
}

impl ConsumerState {
    /// A short lower-case label for logs and `/readyz`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Consuming => "consuming",
            Self::Reconnecting => "reconnecting",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

/// A source's state and how many subscriptions it has established so far (1 + reconnects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthStatus {
    pub state: ConsumerState,
    pub sessions: u64,
}

/// A cheap-to-clone, read-only view of a source's [`HealthStatus`], for `/readyz`.
///
/// "Process up, consumer dead" must be visible: the state leaves `Consuming` as soon as the
/// source notices the loss, not when a delivery next fails.
#[derive(Clone, Debug)]
pub struct SourceHealth {
    status: tokio::sync::watch::Receiver<HealthStatus>,
}

/// The writing side of a [`SourceHealth`], kept by the source.
#[derive(Debug)]
pub struct HealthReporter {
    status: tokio::sync::watch::Sender<HealthStatus>,
}

impl HealthReporter {
    /// Sets the state.
    pub fn set(&self, state: ConsumerState) {
        self.status.send_modify(|s| s.state = state);
    }

    /// A (new) subscription is established: consuming, one more session.
    pub fn consuming(&self) {
        self.status.send_modify(|s| {
            s.state = ConsumerState::Consuming;
            s.sessions += 1;
        });
    }

    /// Consuming → reconnecting; returns whether it was consuming (so the loss is logged once).
    pub fn lost(&self) -> bool {
        self.status.send_if_modified(|s| {
            let was = s.state == ConsumerState::Consuming;
            if was {
                s.state = ConsumerState::Reconnecting;
            }
            was
        })
    }

    /// The current state.
    pub fn state(&self) -> ConsumerState {
        self.status.borrow().state
    }
}

impl SourceHealth {
    /// A health view and the reporter its source updates.
    pub fn new(initial: ConsumerState) -> (HealthReporter, Self) {
        let (status, rx) = tokio::sync::watch::channel(HealthStatus {
            state: initial,
            sessions: 0,
        });
        (HealthReporter { status }, Self { status: rx })
    }

    /// The current status.
    pub fn status(&self) -> HealthStatus {
        *self.status.borrow()
    }

    /// The current state.
    pub fn state(&self) -> ConsumerState {
        self.status().state
    }

    /// Subscriptions established so far; more than 1 means the source has reconnected.
    pub fn sessions(&self) -> u64 {
        self.status().sessions
    }

    /// Whether deliveries can arrive right now.
    pub fn is_consuming(&self) -> bool {
        self.state() == ConsumerState::Consuming
    }

    /// `Ok` while consuming; otherwise an error naming the state (for `/readyz`).
    pub fn check(&self) -> Result<(), SourceError> {
        match self.state() {
            ConsumerState::Consuming => Ok(()),
            other => Err(SourceError::Unavailable(
                format!("the consumer is {}", other.label()).into(),
            )),
        }
    }

    /// Waits until `pred` holds (or the source is gone), and returns the status then.
    pub async fn wait_for(&mut self, pred: impl Fn(&HealthStatus) -> bool) -> HealthStatus {
        let reached = self.status.wait_for(|s| pred(s)).await.map(|s| *s);
        reached.unwrap_or_else(|_| self.status())
    }
}

/// A stream of deliveries.
#[async_trait]
pub trait PostingSource: Send {
    /// The next delivery; `None` when the source has ended (stopped, or consumer gone for good).
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>>;

    /// Stops taking new deliveries; unsettled ones can still be settled.
    async fn stop(&mut self) -> Result<(), SourceError>;

    /// Takes no new deliveries until [`resume`](Self::resume) (a dependency is down). Those the
    /// source already holds are still handed out by [`next`](Self::next), which then waits.
    async fn pause(&mut self) -> Result<(), SourceError>;

    /// Takes deliveries again after [`pause`](Self::pause).
    async fn resume(&mut self) -> Result<(), SourceError>;

    /// A live view of whether this source is consuming (for `/readyz`). Sources that can lose
    /// their subscription override it; the default reports a source that is always consuming.
    fn health(&self) -> SourceHealth {
        let (reporter, health) = SourceHealth::new(ConsumerState::Consuming);
        reporter.consuming();
        health
    }
}
