//! The operations endpoint, black-box on port 0: `/healthz`, and `/readyz` following Redis and the
//! consumer. Exact `/metrics` counts are checked in `tests/metrics.rs`, a process of its own.

use crate::support;
use support::ops::{Ops, sqlite};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bidorch::config::{RedisSettings, SecretUrl};
use bidorch::http::Readiness;
use bidorch::lock::{MemoryLockStore, RedisLockStore, RedisOptions};
use support::telemetry::Embedded;

#[tokio::test]
async fn healthz_answers_while_the_process_is_up() {
    let ops = Ops::serve(Readiness {
        locks: Arc::new(MemoryLockStore::new()),
        ledger: sqlite().await,
        consuming: Arc::new(AtomicBool::new(false)),
        gate: Default::default(),
        breakers: bidorch::flow::Breakers::new(Default::default()),
    })
    .await;

    let (status, body) = ops.get("/healthz").await;

    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn readyz_is_unready_when_the_lock_store_cannot_be_reached() {
    let closed = RedisLockStore::with_options(
        &RedisSettings {
            url: SecretUrl::new("redis://127.0.0.1:1/0"),
            key_prefix: support::unique("ops"),
        },
        &RedisOptions {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            ..RedisOptions::default()
        },
    )
    .unwrap();
    let ops = Ops::serve(Readiness {
        locks: Arc::new(closed),
        ledger: sqlite().await,
        consuming: Arc::new(AtomicBool::new(true)),
        gate: Default::default(),
        breakers: bidorch::flow::Breakers::new(Default::default()),
    })
    .await;

    let (status, report) = ops.ready().await;

    assert_eq!(status, 503);
    assert!(!report.ready);
    assert_ne!(report.lock_store, "ok");
    assert_eq!(
        (report.ledger.as_str(), report.consumer.as_str()),
        ("ok", "ok")
    );
}

#[tokio::test]
async fn readyz_turns_unready_while_redis_is_unreachable_and_ready_again_after() {
    if !support::redis_available().await {
        return;
    }
    let mut proxy =
        support::proxy::TcpProxy::start(&support::host_port(&support::redis_url(), 6379)).await;
    let redis = RedisLockStore::with_options(
        &RedisSettings {
            url: SecretUrl::new(format!("redis://{}/0", proxy.addr)),
            key_prefix: support::unique("ops"),
        },
        &RedisOptions {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            ..RedisOptions::default()
        },
    )
    .unwrap();
    let ops = Ops::serve(Readiness {
        locks: Arc::new(redis),
        ledger: sqlite().await,
        consuming: Arc::new(AtomicBool::new(true)),
        gate: Default::default(),
        breakers: bidorch::flow::Breakers::new(Default::default()),
    })
    .await;
    let report = ops.wait_ready_status(200).await;
    assert_eq!(report.lock_store, "ok");

    proxy.cut().await;
    let report = ops.wait_ready_status(503).await;
    assert!(!report.ready);
    assert_ne!(report.lock_store, "ok");
    assert_eq!(report.ledger, "ok");

    proxy.restore().await;
    let report = ops.wait_ready_status(200).await;
    assert!(report.ready);
    assert_eq!(report.lock_store, "ok");
}

#[tokio::test]
async fn readyz_follows_the_consumer_through_stop_and_restart() {
    let app = Embedded::start(&["opsready"], Arc::new(MemoryLockStore::new())).await;
    let consuming = Arc::new(AtomicBool::new(false));
    let ops = Ops::serve(Readiness {
        locks: Arc::new(MemoryLockStore::new()),
        ledger: app.ledger.ledger.clone(),
        consuming: consuming.clone(),
        gate: Default::default(),
        breakers: bidorch::flow::Breakers::new(Default::default()),
    })
    .await;
    let (status, report) = ops.ready().await;
    assert_eq!((status, report.consumer.as_str()), (503, "not consuming"));

    for _ in 0..2 {
        // A worker consuming makes the process ready…
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(bidorch::worker::run(
            Box::new(app.broker.consumer(4)),
            app.pipeline.clone(),
            app.options(),
            bidorch::worker::Status {
                consuming: consuming.clone(),
                gate: Default::default(),
            },
            async {
                let _ = stopped.await;
            },
        ));
        let report = ops.wait_ready_status(200).await;
        assert_eq!(report.consumer, "ok");

        // …and once it has stopped consuming, unready at once.
        stop.send(()).unwrap();
        worker.await.unwrap();
        assert!(!consuming.load(Ordering::SeqCst));
        let (status, report) = ops.ready().await;
        assert_eq!((status, report.consumer.as_str()), (503, "not consuming"));
    }
}
