//! Settling a RabbitMQ delivery: ack, retry through a wait queue, or park in the dead-letter queue.
//!
//! Retry and dead-letter are "publish a copy, await its publisher confirm, THEN ack the
//! original". A failure anywhere returns an error and leaves the original unacked, so the broker
//! redelivers it: at worst a message is delivered twice (the ledger makes that harmless), never
//! lost. Copies are published `mandatory`; a confirmed-but-returned copy (its queue is gone) is an
//! error like a negative confirm, because a confirm alone does not mean "routed".

use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::BasicNackOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel};

use super::acks::{AckError, Acks};
use tokio::sync::Mutex;

use crate::amqp::confirm::publish_confirmed;
use crate::amqp::connection::{confirm_channel, short};
use crate::amqp::headers::{copy_headers, copy_properties, text};
use crate::amqp::{AmqpError, topology};
use crate::config::AmqpSettings;
use crate::source::{
    ATTEMPT_HEADER, DETAIL_HEADER, FIRST_SEEN_HEADER, Parked, REASON_HEADER, Requeue, Settle,
    SourceError,
};

/// Longest `x-bidorch-detail` we attach; details are for humans, not for archiving bodies.
const MAX_DETAIL_BYTES: usize = 1024;

/// How long an unsettled delivery stays with us before it is handed back: a copy that could
/// not be published (its wait queue refused it, the channel broke) must not turn into a hot
/// redeliver-fail loop; meanwhile it holds one prefetch slot, which slows the loop further.
const HAND_BACK_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// The confirm-mode channel retries and dead letters are published on, rebuilt on its
/// connection when the broker closed it (a channel-level error does not close the connection).
pub(crate) struct Republisher {
    connection: Arc<lapin::Connection>,
    settings: Arc<AmqpSettings>,
    /// One publish in flight at a time: lapin hands a `basic.return` to whichever confirm
    /// completes next, so with concurrent publishes a return could be reported to the wrong
    /// caller — which would then ack an original whose copy was dropped. Serialising makes the
    /// attribution exact; retries are the minority path, so the cost is small.
    channel: Mutex<Channel>,
}

impl Republisher {
    pub(crate) fn new(
        connection: Arc<lapin::Connection>,
        channel: Channel,
        settings: Arc<AmqpSettings>,
    ) -> Self {
        Self {
            connection,
            settings,
            channel: Mutex::new(channel),
        }
    }

    /// Publishes to the default exchange (straight to queue `queue`) and awaits the confirm,
    /// bounded by `amqp.confirm_timeout`. A channel found closed is rebuilt once first.
    async fn publish_to_queue(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), SourceError> {
        let mut channel = self.channel.lock().await;
        if !channel.status().connected() && self.connection.status().connected() {
            tracing::info!("Reopening the republish channel the broker closed");
            *channel = confirm_channel(&self.connection).await?;
        }
        let confirmed = tokio::time::timeout(
            self.settings.confirm_timeout,
            publish_confirmed(&channel, "", queue, body, properties),
        )
        .await
        .map_err(|_| {
            SourceError::Unavailable(
                format!(
                    "no publisher confirm from RabbitMQ within amqp.confirm_timeout ({})",
                    humantime::format_duration(self.settings.confirm_timeout)
                )
                .into(),
            )
        })?;
        Ok(confirmed?)
    }
}

/// Settles one delivery from [`super::AmqpPostingSource`].
pub(crate) struct AmqpSettler {
    /// Hands the delivery back when it is dropped unsettled.
    acker: Acker,
    /// The acks of the channel it came on, and its tag there.
    acks: Arc<Acks>,
    delivery_tag: u64,
    /// The original's properties: a copy keeps its content type, message id, headers.
    properties: BasicProperties,
    republisher: Arc<Republisher>,
    /// Whether the original was acked; if not when dropped, it is handed back to the broker.
    settled: bool,
    /// Whether a settlement was tried and failed: the hand-back then waits [`HAND_BACK_DELAY`].
    failed: bool,
    /// Whether its ack was queued: it may still be written (an ack can wait for others), so the
    /// delivery is never handed back after that — a nack besides the ack would make the broker
    /// close the channel. If the ack failed, the channel is gone and the broker requeues anyway.
    ack_queued: bool,
}

impl AmqpSettler {
    pub(crate) fn new(
        acker: Acker,
        acks: Arc<Acks>,
        delivery_tag: u64,
        properties: BasicProperties,
        republisher: Arc<Republisher>,
    ) -> Self {
        Self {
            acker,
            acks,
            delivery_tag,
            properties,
            republisher,
            settled: false,
            failed: false,
            ack_queued: false,
        }
    }

    /// Acks the original with its channel's other acks ([`Acks`]). Not through its `Acker`:
    /// lapin hands each of those to its internal RPC task, which spawns a task per ack (its
    /// future copied in and out, about 4 KiB each time): two thirds of the bytes a worker copied
    /// per posting in copies over 1.8 KiB, and 10 k of its instructions. A channel that died or
    /// was replaced refuses the ack (the tag means nothing on another channel).
    async fn ack_original(&mut self) -> Result<(), SourceError> {
        if !self.acker.usable() {
            // The channel failed (or the delivery was settled): the ack would not be sent.
            return Err(SourceError::Unsettled);
        }
        self.ack_queued = true;
        match self.acks.ack(self.delivery_tag).await {
            Ok(()) => {
                self.settled = true;
                Ok(())
            }
            Err(AckError::Abandoned) => Err(SourceError::Unsettled),
            Err(AckError::Refused(e)) => Err(match crate::amqp::connection::classify(e) {
                AmqpError::Unavailable(_) | AmqpError::ChannelClosed => SourceError::Unsettled,
                other => other.into(),
            }),
        }
    }
}

impl Drop for AmqpSettler {
    /// An unsettled delivery (the handler panicked, or settling failed) goes back to the queue
    /// now rather than pinning a prefetch slot until the channel closes. The quorum queue counts
    /// these returns, so a message that keeps failing is parked at `x-delivery-limit`.
    fn drop(&mut self) {
        if self.settled || self.ack_queued || !self.acker.usable() {
            return;
        }
        let acker = self.acker.clone();
        let (acks, tag) = (Arc::clone(&self.acks), self.delivery_tag);
        let delay = if self.failed {
            HAND_BACK_DELAY
        } else {
            std::time::Duration::ZERO
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(delay).await;
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                match acker.nack(requeue).await {
                    // Written: a run of acks may now pass over it.
                    Ok(true) => acks.settled(tag),
                    // Not sent: the channel failed, and the broker requeues it.
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(error = %crate::error::Chain(&e), "Could not return an unsettled delivery");
                    }
                }
            });
        }
    }
}

#[async_trait]
impl Settle for AmqpSettler {
    async fn ack(mut self: Box<Self>) -> Result<(), SourceError> {
        self.ack_original().await
    }

    async fn retry(mut self: Box<Self>, requeue: Requeue) -> Result<(), SourceError> {
        let settings = &self.republisher.settings;
        let tier = topology::pick_tier(&settings.retry_tiers, requeue.delay).ok_or_else(|| {
            SourceError::Topology("amqp.retry_tiers is empty: nowhere to wait".to_owned())
        })?;
        let wait_queue = settings.retry_queue(tier);
        let headers = copy_headers(&self.properties, &requeue.envelope_headers());
        let properties = copy_properties(&self.properties, headers);
        let published = self
            .republisher
            .publish_to_queue(&wait_queue, &requeue.body, properties)
            .await;
        self.failed = published.is_err();
        published?;
        self.ack_original().await
    }

    async fn dead_letter(mut self: Box<Self>, parked: Parked) -> Result<(), SourceError> {
        let dead_queue = self.republisher.settings.dead_letter_queue();
        let mut headers = copy_headers(&self.properties, &parked.headers);
        set(
            &mut headers,
            ATTEMPT_HEADER,
            AMQPValue::LongLongInt(parked.attempt.into()),
        )?;
        set(&mut headers, REASON_HEADER, text(&parked.reason))?;
        set(
            &mut headers,
            FIRST_SEEN_HEADER,
            AMQPValue::LongLongInt(
                i64::try_from(crate::envelope::unix_ms(parked.first_seen)).unwrap_or(i64::MAX),
            ),
        )?;
        set(
            &mut headers,
            DETAIL_HEADER,
            text(truncate(&parked.detail, MAX_DETAIL_BYTES)),
        )?;
        let properties = copy_properties(&self.properties, headers);
        let published = self
            .republisher
            .publish_to_queue(&dead_queue, &parked.body, properties)
            .await;
        self.failed = published.is_err();
        published?;
        self.ack_original().await
    }
}

fn set(headers: &mut FieldTable, name: &str, value: AMQPValue) -> Result<(), SourceError> {
    headers.insert(short(name)?, value);
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
