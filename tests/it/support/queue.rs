//! Helpers for the RabbitMQ tests: isolated settings per test, a raw inspection channel, counts,
//! and cleanup of everything a test declared.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bidorch::config::{AmqpSettings, SecretUrl};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::support;

/// Settings with names unique to this test and short retry tiers (200ms, 1s).
pub fn settings() -> AmqpSettings {
    let id = support::unique("q");
    AmqpSettings {
        url: SecretUrl::new(support::amqp_url()),
        exchange: format!("{id}.ex"),
        queue: id,
        prefetch: 10,
        retry_tiers: vec![Duration::from_millis(200), Duration::from_secs(1)],
        max_attempts: 3,
        delivery_limit: 3,
        publish_window: 64,
        reconnect_timeout: Duration::from_secs(10),
        retry_budget: Duration::from_secs(24 * 3600),
        confirm_timeout: Duration::from_secs(30),
    }
}

/// A plain connection and channel for inspecting and seeding queues.
pub struct Inspector {
    pub connection: Connection,
    pub channel: Channel,
}

impl Inspector {
    pub async fn connect() -> Self {
        let connection = Connection::connect(&support::amqp_url(), ConnectionProperties::default())
            .await
            .expect("test connection to RabbitMQ");
        let channel = connection.create_channel().await.expect("test channel");
        Self {
            connection,
            channel,
        }
    }

    /// Ready messages in `queue` (passive declare; a missing queue panics the test).
    pub async fn ready(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"));
        let _ = channel.close(200, "OK".into()).await;
        q.message_count()
    }

    /// Whether `queue` exists.
    pub async fn exists(&self, queue: &str) -> bool {
        let channel = self.connection.create_channel().await.expect("channel");
        let found = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok();
        let _ = channel.close(200, "OK".into()).await;
        found
    }

    /// Publishes raw bytes to `exchange` with `routing_key` (no validation, no confirms needed).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("publish completes");
    }

    /// Takes (and acks) one message from `queue`, if any.
    pub async fn take(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
    }

    /// Takes one message from `queue`, waiting (bounded) for one to be ready.
    pub async fn take_eventually(
        &self,
        queue: &str,
        limit: Duration,
    ) -> lapin::message::BasicGetMessage {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(m) = self.take(queue).await {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a message in {queue}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes every ready message from `queue` until it is empty.
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let mut all = Vec::new();
        while let Some(m) = self.take(queue).await {
            all.push(m);
        }
        all
    }

    /// Deletes every queue of the topology and the exchange.
    pub async fn cleanup(&self, settings: &AmqpSettings) {
        let channel = self.connection.create_channel().await.expect("channel");
        let mut queues = vec![settings.queue.clone(), settings.dead_letter_queue()];
        queues.extend(
            settings
                .retry_tiers
                .iter()
                .map(|t| settings.retry_queue(*t)),
        );
        for q in queues {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                settings.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "OK".into()).await;
    }
}

/// Deletes a test's queues and exchange when dropped — also when the test panics halfway.
pub struct Cleanup(pub AmqpSettings);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let settings = self.0.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the deletes.
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                let inspector = Inspector::connect().await;
                inspector.cleanup(&settings).await;
            });
        });
        let _ = done.join();
    }
}

/// A valid posting event body with these ids.
pub fn posting(event_id: &str, marketplace: &str, posting_id: &str) -> Vec<u8> {
    support::event(serde_json::json!({
        "event_id": event_id,
        "marketplace": marketplace,
        "posting_id": posting_id,
    }))
}

pub use support::eventually;

/// The source's next delivery, within `limit`.
pub async fn next_within(
    limit: Duration,
    source: &mut impl bidorch::source::PostingSource,
) -> bidorch::source::Delivery {
    tokio::time::timeout(limit, source.next())
        .await
        .expect("a delivery arrives in time")
        .expect("the source has not ended")
        .expect("the delivery is readable")
}

/// Declares `settings`' exchange and queues, as a worker does when it connects (so that a
/// publisher's `mandatory` events have somewhere to go before any worker runs).
pub async fn declare_topology(settings: &AmqpSettings) {
    bidorch::source::AmqpPostingSource::connect(settings, "topology")
        .await
        .expect("the broker declares the topology")
        .close()
        .await
        .expect("the setup connection closes");
}

/// Closes, broker-side, the connection whose client-provided name is `name`, as an operator's
/// `rabbitmqctl close_connection` would. The command is `$BIDORCH_RABBITMQCTL` (e.g.
/// `docker compose exec -T rabbitmq rabbitmqctl`) or `rabbitmqctl`. Returns false, after printing
/// SKIPPED, when the tool is unavailable.
pub async fn close_connection_named(name: &str) -> bool {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let command = std::env::var("BIDORCH_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
        let mut parts = command.split_whitespace();
        let program = parts.next().unwrap_or("rabbitmqctl").to_owned();
        let prefix: Vec<String> = parts.map(str::to_owned).collect();
        let run = |args: &[&str]| {
            std::process::Command::new(&program)
                .args(&prefix)
                .args(args)
                .output()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listed = match run(&["list_connections", "--quiet", "--no-table-headers", "pid", "client_properties"]) {
                Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
                _ => {
                    return Err(format!(
                        "`{command}` is unavailable to close a connection broker-side (set BIDORCH_RABBITMQCTL)"
                    ));
                }
            };
            let needle = format!("{{\"connection_name\",\"{name}\"}}");
            if let Some(line) = listed.lines().find(|l| l.contains(&needle)) {
                let pid = line.split('\t').next().unwrap_or_default().to_owned();
                let out = run(&["close_connection", &pid, "closed by a bidorch test"])
                    .expect("rabbitmqctl close_connection runs");
                assert!(out.status.success(), "close_connection failed: {out:?}");
                return Ok(());
            }
            assert!(Instant::now() < deadline, "connection {name} never listed by the broker");
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .expect("rabbitmqctl task")
    .map_or_else(|why| support::skip(&why), |()| true)
}
