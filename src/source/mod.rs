//! The source port: deliveries of posting events and how each one is settled.
//!
//! A [`Delivery`] must be settled exactly once — [`ack`](Delivery::ack) after the ledger has the
//! outcome, [`retry`](Delivery::retry) with a delay, or [`dead_letter`](Delivery::dead_letter)
//! with a reason. Dropping one unsettled leaves it to the source to redeliver (RabbitMQ does when
//! the channel closes), so a crash loses nothing.

mod amqp;
pub mod memory;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

pub use self::amqp::AmqpPostingSource;
pub use self::memory::{MemoryPostingSource, MemoryQueue};

/// Header carrying the attempt number (1 for a first delivery).
pub const ATTEMPT_HEADER: &str = "x-bidorch-attempt";
/// Header carrying the reason a message was parked or retried.
pub const REASON_HEADER: &str = "x-bidorch-reason";
/// Header carrying the human-readable detail of that reason.
pub const DETAIL_HEADER: &str = "x-bidorch-detail";

/// One message taken from a source, not yet settled.
pub struct Delivery {
    /// The raw event body.
    pub body: Vec<u8>,
    /// 1-based attempt number from [`ATTEMPT_HEADER`].
    pub attempt: u32,
    /// Whether the broker says it delivered this message before (e.g. after a crash).
    pub redelivered: bool,
    /// The message id (the publisher sets it to `event_id`).
    pub message_id: Option<String>,
    /// String-valued headers of interest (trace context, reason), lower-case names.
    pub headers: BTreeMap<String, String>,
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
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Removes the message: its outcome is recorded.
    pub async fn ack(self) -> Result<(), SourceError> {
        self.settler.ack().await
    }

    /// Schedules the message again after about `delay`, with attempt + 1.
    pub async fn retry(self, delay: Duration, reason: &str) -> Result<(), SourceError> {
        let (body, attempt, headers) = (self.body, self.attempt, self.headers);
        self.settler
            .retry(Requeue {
                body,
                next_attempt: attempt + 1,
                headers,
                delay,
                reason: reason.to_owned(),
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
}

/// A message to park in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct Parked {
    pub body: Vec<u8>,
    pub attempt: u32,
    pub headers: BTreeMap<String, String>,
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

    /// A live view of whether this source is consuming (for `/readyz`). Sources that can lose
    /// their subscription override it; the default reports a source that is always consuming.
    fn health(&self) -> SourceHealth {
        let (reporter, health) = SourceHealth::new(ConsumerState::Consuming);
        reporter.consuming();
        health
    }
}
