//! Settling a delivery of the in-process queue: ack, retry (back later, or now with
//! `Requeue`), dead-letter — RabbitMQ's semantics, delivery limit included.

use async_trait::async_trait;

use super::super::{Parked, Requeue, Settle, SourceError};
use super::{DeadLetter, MemoryQueue, Message};

/// Settles one in-memory delivery; dropped unsettled, it hands the message back.
pub(super) struct MemorySettler {
    pub(super) queue: MemoryQueue,
    pub(super) consumer: u64,
    pub(super) tag: u64,
}

impl MemorySettler {
    /// Removes the delivery from its consumer's unsettled set; `Unsettled` if it is no longer
    /// there (its consumer was closed and the message already handed back).
    fn take(&self) -> Result<Message, SourceError> {
        let taken = self
            .queue
            .shared
            .lock()
            .consumers
            .get_mut(&self.consumer)
            .and_then(|unsettled| unsettled.remove(&self.tag));
        self.queue.shared.changed.notify_waiters();
        taken.ok_or(SourceError::Unsettled)
    }
}

impl Drop for MemorySettler {
    fn drop(&mut self) {
        let shared = &self.queue.shared;
        let mut inner = shared.lock();
        let unsettled = inner
            .consumers
            .get_mut(&self.consumer)
            .and_then(|u| u.remove(&self.tag));
        if let Some(message) = unsettled {
            shared.hand_back(&mut inner, message);
        }
        drop(inner);
        shared.changed.notify_waiters();
    }
}

#[async_trait]
impl Settle for MemorySettler {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        self.take()?;
        self.queue.shared.lock().acked += 1;
        Ok(())
    }

    async fn retry(self: Box<Self>, requeue: Requeue) -> Result<(), SourceError> {
        let original = self.take()?;
        let headers = requeue.envelope_headers();
        let copy = Message {
            body: requeue.body,
            message_id: original.message_id,
            attempt: requeue.next_attempt,
            headers,
            first_seen: Some(requeue.first_seen),
            not_before: requeue.not_before,
            redelivered: false,
            returns: 0,
        };
        let queue = self.queue.clone();
        queue.shared.lock().delayed += 1;
        tokio::spawn(async move {
            tokio::time::sleep(requeue.delay).await;
            {
                let mut inner = queue.shared.lock();
                inner.delayed -= 1;
                inner.ready.push_back(copy);
            }
            queue.shared.changed.notify_waiters();
        });
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, parked: Parked) -> Result<(), SourceError> {
        let original = self.take()?;
        self.queue.shared.lock().dead.push(DeadLetter {
            body: parked.body,
            message_id: original.message_id,
            attempt: parked.attempt,
            reason: parked.reason,
            detail: parked.detail,
            headers: parked.headers,
        });
        Ok(())
    }
}
