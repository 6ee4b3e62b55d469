//! The worker on real RabbitMQ, Redis and PostgreSQL: what happens to a message when its lease is
//! held elsewhere, when it keeps failing, and when it is poison.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use bidorch::config::Settings;
use bidorch::lock::LockStore;
use bidorch::marketplace::sandbox::{Sandbox, SandboxOptions};
use bidorch::posting::PostingKey;
use bidorch::source::{ATTEMPT_HEADER, REASON_HEADER};
use bidorch::tally::Tally;
use lapin::types::AMQPValue;
use support::queue::{Cleanup, Inspector, eventually};

const TOKEN: &str = "wq-token";
const WAIT: Duration = Duration::from_secs(30);

/// A worker with its sandbox, on names unique to the test.
struct Harness {
    settings: Settings,
    sandbox: Sandbox,
    locks: Arc<dyn LockStore>,
    tally: Arc<Tally>,
    stop: tokio::sync::watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
    _cleanup: Cleanup,
}

impl Harness {
    async fn start(max_attempts: u32) -> Self {
        let (sandbox, url) = support::serve_sandbox(SandboxOptions {
            token: Some(TOKEN.to_owned()),
            honour_idempotency: false,
            ..SandboxOptions::default()
        })
        .await;
        let names = support::queue::settings().queue;
        let settings = support::run_settings(
            &names,
            &url,
            &[("BIDORCH__AMQP__MAX_ATTEMPTS", max_attempts.to_string())],
        );
        let tally = Arc::new(Tally::default());
        let system = support::worker_system(&settings, TOKEN, Some(tally.clone())).await;
        let locks = system.ports().locks.clone();
        // Declare the topology before anyone publishes (the worker also does, concurrently).
        support::queue::declare_topology(&settings.amqp).await;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(async move {
            system
                .run_worker(false, async move {
                    let _ = stopped.wait_for(|v| *v).await;
                })
                .await
                .expect("worker starts");
        });
        Self {
            _cleanup: Cleanup(settings.amqp.clone()),
            settings,
            sandbox,
            locks,
            tally,
            stop,
            worker,
        }
    }

    async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.worker.await;
        support::drop_schema(&self.settings.database.schema).await;
        support::delete_redis_prefix(&self.settings.redis.key_prefix).await;
    }
}

fn header_text(message: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    let headers = message.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_held_elsewhere_waits_for_the_holders_lease_without_counting_then_bids_once() {
    if !(support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await)
    {
        return;
    }
    let h = Harness::start(3).await;
    let key = PostingKey::new("upwork", "held_1").unwrap();
    // Arrange: another holder has the lease, for longer than max_attempts x the largest tier.
    let _lease = h
        .locks
        .try_acquire(&key, Duration::from_secs(4))
        .await
        .unwrap()
        .expect("the key is free");
    let inspector = Inspector::connect().await;
    inspector
        .publish(
            &h.settings.amqp.exchange,
            "posting.upwork",
            &support::queue::posting("ev-held-1", "upwork", "held_1"),
            lapin::BasicProperties::default(),
        )
        .await;

    // Act: the worker meets the held lease and waits for what is left of it; the holder never
    // lets go (it crashed), so the lease expires by its TTL.
    let tally = h.tally.clone();
    eventually(WAIT, "a lock_held retry", || {
        let t = tally.clone();
        async move { t.snapshot().retries.get("lock_held").copied().unwrap_or(0) >= 1 }
    })
    .await;
    assert!(
        h.sandbox.stats().postings.is_empty(),
        "no bid while the lease is held"
    );
    // The tally counts the outcome after the ledger has it: the last thing to happen.
    eventually(WAIT, "the bid after the lease expired", || {
        let t = tally.clone();
        async move { t.snapshot().placed_new == 1 }
    })
    .await;

    // Assert: one bid, placed on a later attempt (the retry came back from the wait queue
    // with its attempt header raised), and nothing left anywhere.
    let c = h.tally.snapshot();
    assert_eq!(c.placed_new, 1);
    assert_eq!(h.sandbox.stats().postings["upwork:held_1"].bids, 1);
    assert_eq!(
        inspector.ready(&h.settings.amqp.dead_letter_queue()).await,
        0
    );
    assert!(
        c.outcome("lock_held") >= 1,
        "the first attempt met the held lease: {c:?}"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_that_keeps_failing_is_parked_after_max_attempts_with_its_reason() {
    if !(support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await)
    {
        return;
    }
    let h = Harness::start(3).await;
    // The marketplace fails this posting with 500s (fewer in a row than pause it).
    h.sandbox
        .set_outage(Some(bidorch::marketplace::sandbox::Fault {
            status: 500,
            retry_after: None,
        }));
    let inspector = Inspector::connect().await;
    inspector
        .publish(
            &h.settings.amqp.exchange,
            "posting.upwork",
            &support::queue::posting("ev-stuck-1", "upwork", "stuck_1"),
            lapin::BasicProperties::default(),
        )
        .await;

    let parked = inspector
        .take_eventually(&h.settings.amqp.dead_letter_queue(), WAIT)
        .await;
    assert_eq!(
        header_text(&parked, REASON_HEADER).as_deref(),
        Some("max_attempts")
    );
    assert_eq!(header_text(&parked, ATTEMPT_HEADER).as_deref(), Some("3"));
    // The tally counts the dead letter once the worker has settled the delivery, which can be
    // after the parked copy reaches the queue.
    let tally = h.tally.clone();
    eventually(WAIT, "the dead letter counted", || {
        let t = tally.clone();
        async move { t.snapshot().dead_letters.contains_key("max_attempts") }
    })
    .await;
    let c = h.tally.snapshot();
    assert_eq!(c.retries.get("marketplace_transient"), Some(&2), "{c:?}");
    assert_eq!(c.dead_letters.get("max_attempts"), Some(&1), "{c:?}");
    assert_eq!(h.sandbox.stats().bids_created, 0, "never bid");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_is_dead_lettered_at_once_with_its_reason() {
    if !(support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await)
    {
        return;
    }
    let h = Harness::start(10).await;
    let inspector = Inspector::connect().await;
    inspector
        .publish(
            &h.settings.amqp.exchange,
            "posting.upwork",
            br#"{"event_id":"ev-poison","marketplace":"upwork","title":"no posting id"}"#,
            lapin::BasicProperties::default(),
        )
        .await;
    let parked = inspector
        .take_eventually(&h.settings.amqp.dead_letter_queue(), WAIT)
        .await;
    assert_eq!(
        header_text(&parked, REASON_HEADER).as_deref(),
        Some("missing_field")
    );
    // The tally counts after the settlement returns: a moment after the copy is parked.
    let tally = h.tally.clone();
    eventually(WAIT, "the poison counted", || {
        let t = tally.clone();
        async move { t.snapshot().processed() >= 1 }
    })
    .await;
    let c = h.tally.snapshot();
    assert_eq!(c.processed(), 1, "processed once, never retried: {c:?}");
    assert!(c.retries.is_empty());
    assert_eq!(inspector.ready(&h.settings.amqp.queue).await, 0);
    h.finish().await;
}
