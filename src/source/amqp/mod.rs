//! RabbitMQ posting source: consume from the quorum work queue, settle through publisher confirms,
//! and come back by itself after connection, channel or consumer loss.
//!
//! - [`topology`]: the exchange and queues, declared idempotently at every (re)connect.
//! - [`consumer`]: one live subscription (connection, channels, consumer) and how a broker
//!   message becomes a [`Delivery`].
//! - [`settle`]: ack, retry through a wait queue, dead-letter — each a confirmed publish, then
//!   the ack of the original.
//! - [`acks`]: a channel's acks, coalesced: consecutive tags as one `multiple` ack
//!   ([`tag_runs`] plans each round).
//!
//! Reconnection is ours, not lapin's (its recovery is opt-in and replays channels we would
//! rather rebuild): when the consumer stream errors or ends without [`stop`](PostingSource::stop)
//! — broker restart, `close_all_connections`, consumer cancelled because its queue was deleted —
//! the source drops the session, reconnects with exponential backoff, re-declares the topology
//! and subscribes again. Deliveries of the dead session can no longer be acked: settling them
//! fails with [`SourceError::Unsettled`] and the broker redelivers them. If no session can be
//! re-established within `amqp.reconnect_timeout`, [`next`](PostingSource::next) returns the
//! error and the state becomes [`ConsumerState::Failed`]: the worker exits non-zero so an
//! orchestrator restarts it, rather than living on as a zombie consumer.

mod acks;
mod consumer;
#[cfg(test)]
mod publisher_input;
mod settle;
mod tag_runs;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use lapin::options::BasicCancelOptions;
use tokio::task::JoinHandle;

use self::consumer::Session;
use crate::amqp::connection::short;
use crate::config::AmqpSettings;
use crate::source::{
    ConsumerState, Delivery, HealthReporter, PostingSource, SourceError, SourceHealth,
};

/// Deliveries from RabbitMQ, with reconnection (see the module docs).
pub struct AmqpPostingSource {
    settings: Arc<AmqpSettings>,
    consumer_tag: String,
    /// The live subscription; `None` while reconnecting (or after stop/failure).
    session: Option<Session>,
    /// The reconnection in progress, in its own task: `next` may be dropped at any await (the
    /// worker's `select!` drops it whenever a posting finishes), and a half-opened session
    /// dropped mid-way can leave a live connection whose consumer nobody reads, holding
    /// `prefetch` messages unacked until the process exits. Awaiting the task's handle is
    /// cancel-safe: a dropped `next` leaves the task running, and the next call picks it up.
    reconnecting: Option<JoinHandle<Result<Session, SourceError>>>,
    state: Arc<HealthReporter>,
    health: SourceHealth,
    /// Set by `stop`: the end of the consumer stream is then expected, never a reason to reconnect.
    stopped: bool,
    /// Set by `pause` (a dependency is down): the consumer is cancelled, so the broker keeps the
    /// queue's messages for when we — or another worker — can work on them; the end of the
    /// consumer stream is expected then too.
    paused: bool,
}

impl std::fmt::Debug for AmqpPostingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpPostingSource")
            .field("url", &self.settings.url)
            .field("queue", &self.settings.queue)
            .field("consumer_tag", &self.consumer_tag)
            .field("state", &self.health.state())
            .finish()
    }
}

impl AmqpPostingSource {
    /// Connects (retrying with backoff for up to `amqp.reconnect_timeout`), declares the
    /// topology, and starts consuming with a per-consumer prefetch of `amqp.prefetch`.
    pub async fn connect(settings: &AmqpSettings, consumer_tag: &str) -> Result<Self, SourceError> {
        let (reporter, health) = SourceHealth::new(ConsumerState::Starting);
        let mut source = Self {
            settings: Arc::new(settings.clone()),
            consumer_tag: consumer_tag.to_owned(),
            session: None,
            reconnecting: None,
            state: Arc::new(reporter),
            health,
            stopped: false,
            paused: false,
        };
        match source.establish().await {
            Ok(session) => {
                source.session = Some(session);
                Ok(source)
            }
            Err(e) => {
                source.state.set(ConsumerState::Failed);
                Err(e)
            }
        }
    }

    /// A live view of the consumer state for `/readyz` (cheap to clone).
    pub fn health(&self) -> SourceHealth {
        self.health.clone()
    }

    /// The connection name the broker shows for this source: `bidorch-{consumer_tag}`.
    pub fn connection_name(&self) -> String {
        format!("bidorch-{}", self.consumer_tag)
    }

    /// The settings this source was built with.
    pub fn settings(&self) -> &AmqpSettings {
        &self.settings
    }

    /// Stops consuming and closes the connection. Deliveries not settled by now are requeued by
    /// the broker; call it after in-flight work has been settled (or the grace period is over).
    pub async fn close(mut self) -> Result<(), SourceError> {
        PostingSource::stop(&mut self).await?;
        if let Some(session) = self.session.take() {
            session.close().await;
        }
        Ok(())
    }

    /// `basic.cancel` of the live subscription, if any (a dead channel has nothing to cancel).
    async fn cancel_consumer(&self) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let Ok(tag) = short(&self.consumer_tag) else {
            return;
        };
        if let Err(e) = session
            .channel()
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
        {
            tracing::debug!(error = %crate::error::Chain(&e), "Consumer cancel on a closed channel");
        }
    }

    /// [`establish`] with this source's settings, state and tag.
    fn establish(&self) -> impl Future<Output = Result<Session, SourceError>> + Send + 'static {
        establish(
            Arc::clone(&self.settings),
            Arc::clone(&self.state),
            self.consumer_tag.clone(),
        )
    }
}

/// Opens a session with backoff, bounded by `reconnect_timeout`. A topology refusal is not
/// retried: the same declare would be refused again. Owns its inputs so it can run in a task.
async fn establish(
    settings: Arc<AmqpSettings>,
    state: Arc<HealthReporter>,
    tag: String,
) -> Result<Session, SourceError> {
    let attempt = || {
        let (settings, state, tag) = (Arc::clone(&settings), Arc::clone(&state), tag.clone());
        async move { Session::open(settings, &tag, state).await }
    };
    let retried = attempt
        .retry(backoff())
        .sleep(tokio::time::sleep)
        .when(|e: &SourceError| !matches!(e, SourceError::Topology(_)))
        .notify(|e: &SourceError, after: Duration| {
            tracing::warn!(
                error = %crate::error::Chain(e),
                retry_in = ?after,
                queue = %settings.queue,
                "Cannot consume from RabbitMQ; retrying"
            );
        });
    let session = match tokio::time::timeout(settings.reconnect_timeout, retried).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(SourceError::Unavailable(
                format!(
                    "could not consume from {} within amqp.reconnect_timeout ({})",
                    settings.url.redacted(),
                    humantime::format_duration(settings.reconnect_timeout)
                )
                .into(),
            ));
        }
    };
    state.consuming();
    tracing::info!(
        queue = %settings.queue,
        consumer_tag = %tag,
        prefetch = settings.prefetch,
        "Consuming from RabbitMQ"
    );
    Ok(session)
}

/// Reconnect backoff: quick first retries, then every few seconds, with jitter so a fleet of
/// workers does not reconnect in lockstep after a broker restart.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

#[async_trait]
impl PostingSource for AmqpPostingSource {
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        loop {
            if self.stopped || self.health.state() == ConsumerState::Failed {
                return None;
            }
            let Some(session) = self.session.as_mut() else {
                let task = match self.reconnecting.as_mut() {
                    Some(task) => task,
                    None => self.reconnecting.insert(tokio::spawn(self.establish())),
                };
                let reconnected = task
                    .await
                    .unwrap_or_else(|e| Err(SourceError::Unavailable(Box::new(e))));
                self.reconnecting = None;
                match reconnected {
                    Ok(session) => {
                        self.session = Some(session);
                        if self.paused {
                            // Paused while reconnecting: the new subscription waits too.
                            self.cancel_consumer().await;
                        }
                        continue;
                    }
                    Err(e) => {
                        self.state.set(ConsumerState::Failed);
                        tracing::error!(
                            error = %crate::error::Chain(&e),
                            queue = %self.settings.queue,
                            "Consuming stopped for good: RabbitMQ could not be reached again"
                        );
                        return Some(Err(e));
                    }
                }
            };
            match session.next_delivery().await {
                Some(Ok(delivery)) => return Some(Ok(delivery)),
                // Paused: what the broker had sent before our cancel is handed out; then wait
                // (the worker drops this future when it resumes us).
                None if self.paused && !self.stopped => std::future::pending::<()>().await,
                Some(Err(e)) if !self.stopped => {
                    tracing::warn!(
                        error = %crate::error::Chain(&e),
                        queue = %self.settings.queue,
                        "Consuming stopped: RabbitMQ connection or channel lost; reconnecting"
                    );
                }
                None if !self.stopped => {
                    tracing::warn!(
                        queue = %self.settings.queue,
                        "Consuming stopped: the broker cancelled the consumer; resubscribing"
                    );
                }
                _ => return None,
            }
            self.state.set(ConsumerState::Reconnecting);
            if let Some(dead) = self.session.take() {
                dead.abandon();
            }
        }
    }

    async fn pause(&mut self) -> Result<(), SourceError> {
        if self.paused || self.stopped {
            return Ok(());
        }
        self.paused = true;
        self.cancel_consumer().await;
        tracing::info!(queue = %self.settings.queue, "Paused consuming from RabbitMQ");
        Ok(())
    }

    async fn resume(&mut self) -> Result<(), SourceError> {
        if !self.paused || self.stopped {
            return Ok(());
        }
        self.paused = false;
        if let Some(session) = self.session.as_mut()
            && let Err(e) = session.resubscribe(&self.consumer_tag).await
        {
            // The session is broken: drop it, `next` reconnects (and subscribes) by itself.
            tracing::warn!(error = %crate::error::Chain(&e), "Resuming the consumer failed; reconnecting");
            self.state.set(ConsumerState::Reconnecting);
            if let Some(dead) = self.session.take() {
                dead.abandon();
            }
        }
        tracing::info!(queue = %self.settings.queue, "Resumed consuming from RabbitMQ");
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), SourceError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.state.set(ConsumerState::Stopped);
        if let Some(task) = self.reconnecting.take() {
            // Let a reconnection in flight finish rather than drop it half-open; then close it.
            tokio::spawn(async move {
                if let Ok(Ok(session)) = task.await {
                    session.close().await;
                }
            });
        }
        if !self.paused {
            // The broker stops sending; deliveries already received stay settleable.
            self.cancel_consumer().await;
        }
        tracing::info!(queue = %self.settings.queue, "Stopped consuming from RabbitMQ");
        Ok(())
    }

    fn health(&self) -> SourceHealth {
        self.health.clone()
    }
}
