//! In-process posting source for the embedded mode (`bidorch demo`, tests): the delivery
//! semantics of the RabbitMQ source, without a broker.
//!
//! Same contract as [`super::AmqpPostingSource`] (one suite, `tests/source_contract.rs`, runs
//! against both): ack removes; retry comes back after the delay with attempt + 1 and the reason
//! header; dead-letter parks with reason and detail in an inspectable list; a delivery dropped
//! unsettled, or still unsettled when its consumer is closed, is redelivered with
//! `redelivered = true` (settling it afterwards fails with [`SourceError::Unsettled`]); a
//! message returned more than `delivery_limit` times is parked with reason `delivery_limit`; each
//! consumer has at most `prefetch` unsettled deliveries. Not durable: pending retries and queued
//! messages live and die with the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::Notify;

mod settle;

use self::settle::MemorySettler;
use super::{ConsumerState, Delivery, HealthReporter, PostingSource, SourceError, SourceHealth};

/// Returns allowed before a message is parked (the quorum queue default on RabbitMQ 4.x).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// A message parked in the in-memory dead-letter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub attempt: u32,
    pub reason: String,
    pub detail: String,
    pub headers: BTreeMap<String, String>,
}

/// Counts of where messages are, for tests and the demo's "drained?" check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Waiting for a consumer.
    pub ready: usize,
    /// Delivered, not yet settled.
    pub unacked: usize,
    /// Retries waiting out their delay.
    pub delayed: usize,
    pub acked: u64,
    pub dead: usize,
}

#[derive(Clone, Debug)]
struct Message {
    body: Vec<u8>,
    message_id: Option<String>,
    attempt: u32,
    /// String headers; bidorch's own only on copies it made (retries), as on RabbitMQ.
    headers: BTreeMap<String, String>,
    first_seen: Option<std::time::SystemTime>,
    not_before: Option<std::time::SystemTime>,
    redelivered: bool,
    /// Times handed back unsettled (the quorum queue's delivery count).
    returns: u32,
}

#[derive(Default)]
struct Inner {
    ready: VecDeque<Message>,
    /// Per consumer: its unsettled deliveries by tag.
    consumers: HashMap<u64, HashMap<u64, Message>>,
    delayed: usize,
    acked: u64,
    dead: Vec<DeadLetter>,
    next_id: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Woken on every change a waiting consumer may care about.
    changed: Notify,
    delivery_limit: u32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding the lock; recover the data rather than poison everything.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts an unsettled message back at the head, or parks it past the delivery limit.
    fn hand_back(&self, inner: &mut Inner, mut message: Message) {
        message.returns += 1;
        message.redelivered = true;
        if message.returns > self.delivery_limit {
            inner.dead.push(DeadLetter {
                body: message.body,
                message_id: message.message_id,
                attempt: message.attempt,
                reason: "delivery_limit".to_owned(),
                detail: format!("returned unsettled {} times", message.returns),
                headers: message.headers,
            });
        } else {
            inner.ready.push_front(message);
        }
    }
}

/// A cheap-to-clone handle on the queue: publish into it, read its dead letters, open consumers.
#[derive(Clone)]
pub struct MemoryQueue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueue")
            .field("stats", &self.stats())
            .finish()
    }
}

impl MemoryQueue {
    /// An empty queue parking messages returned more than `delivery_limit` times.
    pub fn new(delivery_limit: u32) -> Self {
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::default()),
                changed: Notify::new(),
                delivery_limit,
            }),
        }
    }

    /// Enqueues an event body (attempt 1, no headers).
    pub fn publish(&self, body: impl Into<Vec<u8>>) {
        self.publish_with(body, None, BTreeMap::new());
    }

    /// Enqueues an event body with a message id and string headers (e.g. `traceparent`). A
    /// publisher's `x-bidorch-*` headers are dropped: only bidorch's own copies carry them.
    pub fn publish_with(
        &self,
        body: impl Into<Vec<u8>>,
        message_id: Option<String>,
        mut headers: BTreeMap<String, String>,
    ) {
        headers.retain(|name, _| !super::is_own_header(name));
        self.enqueue(Message {
            body: body.into(),
            message_id,
            attempt: 1,
            headers,
            first_seen: None,
            not_before: None,
            redelivered: false,
            returns: 0,
        });
    }

    fn enqueue(&self, message: Message) {
        self.shared.lock().ready.push_back(message);
        self.shared.changed.notify_waiters();
    }

    /// The parked messages, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.shared.lock().dead.clone()
    }

    /// Where messages are right now.
    pub fn stats(&self) -> MemoryStats {
        let inner = self.shared.lock();
        MemoryStats {
            ready: inner.ready.len(),
            unacked: inner.consumers.values().map(HashMap::len).sum(),
            delayed: inner.delayed,
            acked: inner.acked,
            dead: inner.dead.len(),
        }
    }

    /// Opens a consumer with at most `prefetch` unsettled deliveries.
    pub fn subscribe(&self, prefetch: usize) -> MemoryPostingSource {
        let id = {
            let mut inner = self.shared.lock();
            inner.next_id += 1;
            let id = inner.next_id;
            inner.consumers.insert(id, HashMap::new());
            id
        };
        let (reporter, health) = SourceHealth::new(ConsumerState::Starting);
        reporter.consuming();
        MemoryPostingSource {
            queue: self.clone(),
            consumer: id,
            prefetch: prefetch.max(1),
            stopped: false,
            paused: false,
            reporter,
            health,
        }
    }
}

/// One consumer of a [`MemoryQueue`]. Dropping it hands its unsettled deliveries back.
pub struct MemoryPostingSource {
    queue: MemoryQueue,
    consumer: u64,
    prefetch: usize,
    stopped: bool,
    /// Takes nothing new while set (the worker's dependency is down).
    paused: bool,
    reporter: HealthReporter,
    health: SourceHealth,
}

impl std::fmt::Debug for MemoryPostingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPostingSource")
            .field("consumer", &self.consumer)
            .field("prefetch", &self.prefetch)
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl MemoryPostingSource {
    /// A new queue (delivery limit [`DEFAULT_DELIVERY_LIMIT`]) and one consumer on it; publish
    /// through [`queue`](Self::queue).
    pub fn new(prefetch: usize) -> Self {
        MemoryQueue::new(DEFAULT_DELIVERY_LIMIT).subscribe(prefetch)
    }

    /// The queue this consumer reads (publish into it, read dead letters).
    pub fn queue(&self) -> MemoryQueue {
        self.queue.clone()
    }

    /// A live view of the consumer state.
    pub fn health(&self) -> SourceHealth {
        self.health.clone()
    }
}

impl Drop for MemoryPostingSource {
    /// Like a closed channel: everything this consumer had not settled goes back to the queue.
    fn drop(&mut self) {
        let shared = &self.queue.shared;
        let mut inner = shared.lock();
        if let Some(unsettled) = inner.consumers.remove(&self.consumer) {
            let mut by_tag: Vec<(u64, Message)> = unsettled.into_iter().collect();
            // Newest first, so pushing each to the front restores delivery order.
            by_tag.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
            for (_, message) in by_tag {
                shared.hand_back(&mut inner, message);
            }
        }
        drop(inner);
        shared.changed.notify_waiters();
    }
}

#[async_trait]
impl PostingSource for MemoryPostingSource {
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        let shared = Arc::clone(&self.queue.shared);
        loop {
            // Registered before looking, so a change between the look and the wait is not missed.
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.stopped {
                return None;
            }
            {
                let mut inner = shared.lock();
                let in_flight = inner.consumers.get(&self.consumer).map_or(0, HashMap::len);
                if !self.paused
                    && in_flight < self.prefetch
                    && let Some(message) = inner.ready.pop_front()
                {
                    inner.next_id += 1;
                    let tag = inner.next_id;
                    inner
                        .consumers
                        .entry(self.consumer)
                        .or_default()
                        .insert(tag, message.clone());
                    return Some(Ok(Delivery {
                        body: message.body,
                        attempt: message.attempt,
                        redelivered: message.redelivered,
                        message_id: message.message_id,
                        headers: message.headers,
                        first_seen: message
                            .first_seen
                            .unwrap_or_else(std::time::SystemTime::now),
                        not_before: message.not_before,
                        settler: Box::new(MemorySettler {
                            queue: self.queue.clone(),
                            consumer: self.consumer,
                            tag,
                        }),
                    }));
                }
            }
            changed.await;
        }
    }

    async fn stop(&mut self) -> Result<(), SourceError> {
        self.stopped = true;
        self.reporter.set(ConsumerState::Stopped);
        Ok(())
    }

    async fn pause(&mut self) -> Result<(), SourceError> {
        self.paused = true;
        Ok(())
    }

    async fn resume(&mut self) -> Result<(), SourceError> {
        self.paused = false;
        self.queue.shared.changed.notify_waiters();
        Ok(())
    }

    fn health(&self) -> SourceHealth {
        self.health.clone()
    }
}
