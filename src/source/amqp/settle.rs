//! Settling a RabbitMQ delivery: ack, retry through a wait queue, or park in the dead-letter queue.
//!
//! Retry and dead-letter are "publish a copy, await its publisher confirm, THEN ack the
//! original". A failure anywhere returns an error and leaves the original unacked, so the broker
//! redelivers it: at worst a message is delivered twice (the ledger makes that harmless), never
//! lost. Copies are published `mandatory`; a confirmed-but-returned copy (its queue is gone) is an
//! error like a negative confirm, because a confirm alone does not mean "routed".

use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Acker, BasicProperties, Channel, Confirmation};
use tokio::sync::Mutex;

use super::consumer::is_broker_header;
use super::{from_lapin, short, topology};
use crate::config::AmqpSettings;
use crate::source::{
    ATTEMPT_HEADER, DETAIL_HEADER, Parked, REASON_HEADER, Requeue, Settle, SourceError,
};

/// Longest `x-bidorch-detail` we attach; details are for humans, not for archiving bodies.
const MAX_DETAIL_BYTES: usize = 1024;

/// The confirm-mode channel retries and dead letters are published on.
pub(crate) struct Republisher {
    channel: Channel,
    settings: Arc<AmqpSettings>,
    /// One publish in flight at a time: lapin hands a `basic.return` to whichever confirm
    /// completes next, so with concurrent publishes a return could be reported to the wrong
    /// caller — which would then ack an original whose copy was dropped. Serialising makes the
    /// attribution exact; retries are the minority path, so the cost is small.
    in_flight: Mutex<()>,
}

impl Republisher {
    pub(crate) fn new(channel: Channel, settings: Arc<AmqpSettings>) -> Self {
        Self {
            channel,
            settings,
            in_flight: Mutex::new(()),
        }
    }

    /// Publishes to the default exchange (straight to queue `queue`) and awaits the confirm.
    async fn publish_to_queue(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), SourceError> {
        let _one_at_a_time = self.in_flight.lock().await;
        let confirm = self
            .channel
            .basic_publish(
                short("")?,
                short(queue)?,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(from_lapin)?
            .await
            .map_err(from_lapin)?;
        check_confirmation(confirm, queue)
    }
}

/// Turns a confirmation into success only if the broker acked AND did not return the message.
pub(crate) fn check_confirmation(confirm: Confirmation, target: &str) -> Result<(), SourceError> {
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(SourceError::Refused(format!(
                "message to {target} was returned unroutable ({} {})",
                returned.reply_code, returned.reply_text
            )))
        }
        Confirmation::Nack(None) => Err(SourceError::Refused(format!(
            "the broker did not accept the message to {target} (negative confirm)"
        ))),
        Confirmation::NotRequested => Err(SourceError::Refused(
            "publisher confirms are not enabled on this channel".to_owned(),
        )),
    }
}

/// Settles one delivery from [`super::AmqpPostingSource`].
pub(crate) struct AmqpSettler {
    acker: Acker,
    /// The original's properties: a copy keeps its content type, message id, headers.
    properties: BasicProperties,
    republisher: Arc<Republisher>,
    /// Whether the original was acked; if not when dropped, it is handed back to the broker.
    settled: bool,
}

impl AmqpSettler {
    pub(crate) fn new(
        acker: Acker,
        properties: BasicProperties,
        republisher: Arc<Republisher>,
    ) -> Self {
        Self {
            acker,
            properties,
            republisher,
            settled: false,
        }
    }

    async fn ack_original(&mut self) -> Result<(), SourceError> {
        // `Ok(false)`: the channel died (or the acker was used) — the ack was NOT sent.
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => {
                self.settled = true;
                Ok(())
            }
            Ok(false) => Err(SourceError::ChannelClosed),
            Err(e) => Err(match from_lapin(e) {
                SourceError::Unavailable(_) => SourceError::ChannelClosed,
                other => other,
            }),
        }
    }
}

impl Drop for AmqpSettler {
    /// An unsettled delivery (the handler panicked, or settling failed) goes back to the queue
    /// now rather than pinning a prefetch slot until the channel closes. The quorum queue counts
    /// these returns, so a message that keeps failing is parked at `x-delivery-limit`.
    fn drop(&mut self) {
        if self.settled || !self.acker.usable() {
            return;
        }
        let acker = self.acker.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                if let Err(e) = acker.nack(requeue).await {
                    tracing::debug!(error = %e, "Could not return an unsettled delivery");
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
        let mut headers = copy_headers(&self.properties, &requeue.headers);
        set(
            &mut headers,
            ATTEMPT_HEADER,
            AMQPValue::LongLongInt(requeue.next_attempt.into()),
        )?;
        set(&mut headers, REASON_HEADER, text(&requeue.reason))?;
        let properties = copy_properties(&self.properties, headers);
        self.republisher
            .publish_to_queue(&wait_queue, &requeue.body, properties)
            .await?;
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
            DETAIL_HEADER,
            text(truncate(&parked.detail, MAX_DETAIL_BYTES)),
        )?;
        let properties = copy_properties(&self.properties, headers);
        self.republisher
            .publish_to_queue(&dead_queue, &parked.body, properties)
            .await?;
        self.ack_original().await
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
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

/// Headers for a copy: the original's non-string headers minus broker-owned ones (the copy starts
/// a new journey; our attempt header carries the count), and the caller's string headers
/// (trace context, previous reason) as given — they may have been updated since delivery.
pub(crate) fn copy_headers(
    original: &BasicProperties,
    strings: &std::collections::BTreeMap<String, String>,
) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(table) = original.headers() {
        for (name, value) in table.inner() {
            let keep = !is_broker_header(name.as_str())
                && !matches!(value, AMQPValue::LongString(_) | AMQPValue::ShortString(_));
            if keep {
                out.insert(name.clone(), value.clone());
            }
        }
    }
    for (name, value) in strings {
        if is_broker_header(name) {
            continue;
        }
        if let Ok(key) = short(name) {
            out.insert(key, text(value));
        }
    }
    out
}

/// Properties for a copy: the original's identity and content metadata, persistent, with the
/// given headers. No expiration (a per-message TTL would fight the wait queue's), no user id (the
/// broker checks it against the publishing user).
pub(crate) fn copy_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn copies_drop_broker_headers_and_take_the_callers_strings() {
        let mut original = FieldTable::default();
        original.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        original.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        original.insert("x-first-death-queue".into(), text("q"));
        original.insert("traceparent".into(), text("old"));
        original.insert("x-custom-number".into(), AMQPValue::LongInt(9));
        let props = BasicProperties::default()
            .with_headers(original)
            .with_message_id("ev-1".into());
        let strings = BTreeMap::from([
            ("traceparent".to_owned(), "new".to_owned()),
            ("x-death".to_owned(), "q/expired/1".to_owned()),
        ]);
        let headers = copy_headers(&props, &strings);
        let copied = copy_properties(&props, headers.clone());
        assert_eq!(
            copied.message_id().as_ref().map(|s| s.as_str()),
            Some("ev-1")
        );
        assert_eq!(copied.delivery_mode(), &Some(2));
        let names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["traceparent", "x-custom-number"]);
        assert_eq!(headers.inner()["traceparent"], text("new"));
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
