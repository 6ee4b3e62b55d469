//! The RabbitMQ topology bidorch relies on, declared idempotently at every (re)connect.
//!
//! ```text
//! exchange {exchange} (topic, durable)
//!   └─ posting.# ─▶ {queue}            quorum, delivery limit, dead-letters at-least-once ─▶ {queue}.dead
//! {queue}.retry.{tier}  quorum, fixed x-message-ttl = tier, dead-letters (expired) ─▶ {queue}
//! {queue}.dead          classic, durable: the parking lot, drained only by an operator
//! ```
//!
//! Why these choices:
//! - The work queue is a quorum queue (replicated, poison-message aware). Its dead-lettering is
//!   `at-least-once`, which RabbitMQ only honours with `x-overflow: reject-publish`; the
//!   `x-delivery-limit` backstop parks a message that keeps coming back unsettled (it crashes
//!   workers) instead of letting it loop.
//! - Wait queues are quorum too, so the hop back to the work queue is also at-least-once (a
//!   classic queue dead-letters at-most-once). One fixed TTL per queue: messages expire in order,
//!   never stuck behind a longer TTL. Quorum queues support `x-message-ttl` since 3.10.
//! - The dead-letter queue is classic: it has no delivery limit (4.x quorum queues default to 20,
//!   after which a message would be dropped, since the parking lot has nowhere further to go), so
//!   `dlq list` can peek by taking and returning messages as often as it likes; a classic queue
//!   puts returned messages back in their original position, so peeking never reorders.
//!   Throughput there is tiny. A cluster wanting it replicated can pre-declare it as quorum with
//!   `x-delivery-limit: -1` on 4.x; bidorch would then need the same arguments (see below).
//!
//! Redeclaring with identical arguments is a no-op; with different ones the broker refuses
//! (`PRECONDITION_FAILED`) and [`declare`] reports which entity disagrees — delete it or rename
//! the queue in config, the broker never changes an existing queue's arguments.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::AmqpError;
use super::connection::{classify, short};
use crate::config::AmqpSettings;

/// Routing pattern binding the work queue to the exchange.
pub const BINDING_KEY: &str = "posting.#";

/// One queue's name and declare arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: FieldTable,
}

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn int(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(k), v);
    }
    t
}

/// The work queue: quorum, delivery-limit backstop, at-least-once dead-lettering to `{queue}.dead`.
pub fn work_queue(settings: &AmqpSettings) -> QueueSpec {
    QueueSpec {
        name: settings.queue.clone(),
        arguments: table(vec![
            ("x-queue-type", text("quorum")),
            ("x-delivery-limit", int(i64::from(settings.delivery_limit))),
            ("x-dead-letter-exchange", text("")),
            (
                "x-dead-letter-routing-key",
                text(&settings.dead_letter_queue()),
            ),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ]),
    }
}

/// The wait queue of one retry tier: quorum, fixed TTL, expiring back into the work queue.
pub fn retry_queue(settings: &AmqpSettings, tier: Duration) -> QueueSpec {
    let ttl_ms = i64::try_from(tier.as_millis()).unwrap_or(i64::MAX);
    QueueSpec {
        name: settings.retry_queue(tier),
        arguments: table(vec![
            ("x-queue-type", text("quorum")),
            ("x-message-ttl", int(ttl_ms)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&settings.queue)),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ]),
    }
}

/// The parking lot: a durable classic queue (see the module docs for why classic).
pub fn dead_letter_queue(settings: &AmqpSettings) -> QueueSpec {
    QueueSpec {
        name: settings.dead_letter_queue(),
        arguments: table(vec![("x-queue-type", text("classic"))]),
    }
}

/// Every queue of the topology: work queue, wait queues (one per tier), dead-letter queue.
pub fn queues(settings: &AmqpSettings) -> Vec<QueueSpec> {
    let mut all = vec![work_queue(settings)];
    all.extend(
        settings
            .retry_tiers
            .iter()
            .map(|tier| retry_queue(settings, *tier)),
    );
    all.push(dead_letter_queue(settings));
    all
}

/// The wait tier a retry after `delay` goes through: the largest tier not longer than `delay`,
/// or the smallest when `delay` is shorter than every tier. A delay longer than the tier is
/// finished by its `x-bidorch-not-before` header: the message hops through wait queues until
/// then, so it waits about `delay` (overshooting by less than the smallest tier), never a whole
/// larger tier.
pub fn pick_tier(tiers: &[Duration], delay: Duration) -> Option<Duration> {
    tiers
        .iter()
        .copied()
        .filter(|t| *t <= delay)
        .max()
        .or_else(|| tiers.iter().copied().min())
}

/// Declares the exchange only (what a publisher needs); idempotent.
pub async fn declare_exchange(channel: &Channel, settings: &AmqpSettings) -> Result<(), AmqpError> {
    channel
        .exchange_declare(
            short(&settings.exchange)?,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| refine(classify(e), &format!("exchange `{}`", settings.exchange)))
}

/// Declares the whole topology; idempotent. Dead-letter targets are declared before the queues
/// that dead-letter into them.
pub async fn declare(channel: &Channel, settings: &AmqpSettings) -> Result<(), AmqpError> {
    declare_exchange(channel, settings).await?;
    let mut specs = queues(settings);
    // Parking lot first, then the work queue, then the wait queues that feed it.
    specs.rotate_right(1);
    for spec in &specs {
        channel
            .queue_declare(
                short(&spec.name)?,
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                spec.arguments.clone(),
            )
            .await
            .map_err(|e| refine(classify(e), &format!("queue `{}`", spec.name)))?;
    }
    channel
        .queue_bind(
            short(&settings.queue)?,
            short(&settings.exchange)?,
            short(BINDING_KEY)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| refine(classify(e), &format!("binding of `{}`", settings.queue)))
}

/// How many messages wait in `queue` (ready, not unacked), read with a passive declare: a queue
/// that does not exist is a [`AmqpError::Topology`] error (and closes the channel).
pub async fn message_count(channel: &Channel, queue: &str) -> Result<u32, AmqpError> {
    let declared = channel
        .queue_declare(
            short(queue)?,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(classify)?;
    Ok(declared.message_count())
}

/// Names the entity in a topology refusal; other errors pass through.
fn refine(err: AmqpError, what: &str) -> AmqpError {
    match err {
        AmqpError::Topology(msg) => AmqpError::Topology(format!(
            "{what}: {msg} (an existing entity with different arguments is never changed by the \
             broker: delete it, or use another name in config)"
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn picks_the_largest_tier_not_longer_than_the_delay() {
        let tiers = [ms(1000), ms(10_000), ms(60_000)];
        assert_eq!(pick_tier(&tiers, ms(0)), Some(ms(1000)));
        assert_eq!(pick_tier(&tiers, ms(1000)), Some(ms(1000)));
        assert_eq!(pick_tier(&tiers, ms(9_999)), Some(ms(1000)));
        assert_eq!(pick_tier(&tiers, ms(30_000)), Some(ms(10_000)));
        assert_eq!(pick_tier(&tiers, ms(600_000)), Some(ms(60_000)));
        assert_eq!(pick_tier(&[], ms(5)), None);
    }
}
