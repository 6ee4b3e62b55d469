//! The source port: deliveries of posting events and how each one is settled.
//!
//! A [`Delivery`] must be settled exactly once — [`ack`](Delivery::ack) after the ledger has the
//! outcome, [`retry`](Delivery::retry) with a delay, or [`dead_letter`](Delivery::dead_letter)
//! with a reason. Dropping one unsettled leaves it to the source to redeliver (RabbitMQ does when
//! the channel closes), so a crash loses nothing.

pub mod amqp;
pub mod memory;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

pub use self::amqp::AmqpPostingSource;
pub use self::memory::{MemoryBroker, MemoryPostingSource};

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
    #[error("broker unreachable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the channel closed before the settlement was confirmed")]
    ChannelClosed,
    #[error("the broker refused the publish: {0}")]
    Refused(String),
    #[error("broker topology: {0}")]
    Topology(String),
}

/// A stream of deliveries.
#[async_trait]
pub trait PostingSource: Send {
    /// The next delivery; `None` when the source has ended (stopped, or consumer gone for good).
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>>;

    /// Stops taking new deliveries; unsettled ones can still be settled.
    async fn stop(&mut self) -> Result<(), SourceError>;
}
