//! In-process posting source for the embedded mode, with RabbitMQ's delivery semantics.
//!
//! A [`MemoryBroker`] is one queue shared by any number of consumers in this process. Like the
//! RabbitMQ source: each consumer has a prefetch bound; `ack` removes a message; `retry` brings
//! it back after its delay (a timer, never a hot loop) with attempt + 1; `dead_letter` parks it
//! with its reason; a delivery dropped unsettled (a crashed or aborted task) is redelivered with
//! `redelivered = true`. Nothing survives the process: this is for the demo, development and
//! single-process use, never for several worker processes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{
    ATTEMPT_HEADER, Delivery, Parked, PostingSource, REASON_HEADER, Requeue, Settle, SourceError,
};

#[derive(Clone, Debug)]
struct Message {
    body: Vec<u8>,
    attempt: u32,
    redelivered: bool,
    headers: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Message>,
    /// Delivered to a consumer, not yet settled.
    unsettled: usize,
    /// Waiting for their retry delay.
    scheduled: usize,
    dead: Vec<Parked>,
    acked: u64,
}

struct Inner {
    state: Mutex<State>,
    available: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this short lock leaves plain counters behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An in-process queue. Cheap to clone: clones share the queue.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts of a [`MemoryBroker`]'s messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerCounts {
    pub ready: usize,
    pub unsettled: usize,
    pub scheduled: usize,
    pub dead: usize,
    pub acked: u64,
}

impl BrokerCounts {
    /// Messages not yet acked or dead-lettered.
    pub fn outstanding(&self) -> usize {
        self.ready + self.unsettled + self.scheduled
    }
}

impl MemoryBroker {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                available: Notify::new(),
            }),
        }
    }

    /// Enqueues a message body (attempt 1) with optional headers (e.g. `traceparent`).
    pub fn publish(&self, body: Vec<u8>, headers: BTreeMap<String, String>) {
        self.push(Message {
            body,
            attempt: 1,
            redelivered: false,
            headers,
        });
    }

    fn push(&self, message: Message) {
        self.inner.lock().ready.push_back(message);
        self.inner.available.notify_one();
    }

    /// A consumer taking at most `prefetch` unsettled deliveries at a time.
    pub fn consumer(&self, prefetch: usize) -> MemoryPostingSource {
        MemoryPostingSource {
            broker: self.clone(),
            permits: Arc::new(Semaphore::new(prefetch.max(1))),
            stopped: false,
        }
    }

    /// Messages parked in the dead-letter list, oldest first.
    pub fn dead_letters(&self) -> Vec<Parked> {
        self.inner.lock().dead.clone()
    }

    /// Current counts.
    pub fn counts(&self) -> BrokerCounts {
        let s = self.inner.lock();
        BrokerCounts {
            ready: s.ready.len(),
            unsettled: s.unsettled,
            scheduled: s.scheduled,
            dead: s.dead.len(),
            acked: s.acked,
        }
    }
}

/// One consumer of a [`MemoryBroker`].
pub struct MemoryPostingSource {
    broker: MemoryBroker,
    permits: Arc<Semaphore>,
    stopped: bool,
}

#[async_trait]
impl PostingSource for MemoryPostingSource {
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        if self.stopped {
            return None;
        }
        // The prefetch bound: a permit per unsettled delivery, returned when it is settled.
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let inner = &self.broker.inner;
        loop {
            let notified = inner.available.notified();
            tokio::pin!(notified);
            // Register interest before looking, so a publish in between is not missed.
            notified.as_mut().enable();
            if let Some(message) = {
                let mut state = inner.lock();
                let message = state.ready.pop_front();
                if message.is_some() {
                    state.unsettled += 1;
                }
                message
            } {
                return Some(Ok(self.deliver(message, permit)));
            }
            notified.await;
        }
    }

    async fn stop(&mut self) -> Result<(), SourceError> {
        self.stopped = true;
        Ok(())
    }
}

impl MemoryPostingSource {
    fn deliver(&self, message: Message, permit: OwnedSemaphorePermit) -> Delivery {
        Delivery {
            body: message.body.clone(),
            attempt: message.attempt,
            redelivered: message.redelivered,
            message_id: None,
            headers: message.headers.clone(),
            settler: Box::new(MemorySettler {
                broker: self.broker.clone(),
                message: Some(message),
                _permit: permit,
            }),
        }
    }
}

struct MemorySettler {
    broker: MemoryBroker,
    /// `Some` until settled; a settler dropped while `Some` redelivers the message.
    message: Option<Message>,
    _permit: OwnedSemaphorePermit,
}

impl MemorySettler {
    fn settle(&mut self) -> MutexGuard<'_, State> {
        self.message = None;
        let mut state = self.broker.inner.lock();
        state.unsettled -= 1;
        state
    }
}

#[async_trait]
impl Settle for MemorySettler {
    async fn ack(mut self: Box<Self>) -> Result<(), SourceError> {
        self.settle().acked += 1;
        Ok(())
    }

    async fn retry(mut self: Box<Self>, requeue: Requeue) -> Result<(), SourceError> {
        self.settle().scheduled += 1;
        let mut headers = requeue.headers;
        headers.insert(ATTEMPT_HEADER.to_owned(), requeue.next_attempt.to_string());
        headers.insert(REASON_HEADER.to_owned(), requeue.reason);
        let message = Message {
            body: requeue.body,
            attempt: requeue.next_attempt,
            redelivered: false,
            headers,
        };
        let broker = self.broker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(requeue.delay).await;
            {
                // One critical section, so the message is never counted in neither place.
                let mut state = broker.inner.lock();
                state.scheduled -= 1;
                state.ready.push_back(message);
            }
            broker.inner.available.notify_one();
        });
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, parked: Parked) -> Result<(), SourceError> {
        self.settle().dead.push(parked);
        Ok(())
    }
}

impl Drop for MemorySettler {
    fn drop(&mut self) {
        if let Some(mut message) = self.message.take() {
            message.redelivered = true;
            let mut state = self.broker.inner.lock();
            state.unsettled -= 1;
            // Back to the front, as a broker requeues an unacked message on channel close.
            state.ready.push_front(message);
            drop(state);
            self.broker.inner.available.notify_one();
        }
    }
}
