//! Exact counts on `/metrics` after a small embedded run. The Prometheus recorder is global to a
//! process and other tests record the same series, so this is a binary of its own: a separate
//! process is the point.

#[path = "it/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bidorch::http::Readiness;
use bidorch::lock::{
    LockError, LockStore, MemoryLockStore, MeteredLockStore, RedisLockStore, RedisOptions, Renewals,
};
use bidorch::marketplace::sandbox::Fault;
use bidorch::metrics::{CATALOGUE, IN_FLIGHT, LEASES_HELD};
use bidorch::posting::PostingKey;
use support::lock::key;
use support::ops::{Ops, delta};
use support::telemetry::{Embedded, headers, posting};

/// The tests here compare process-wide counters before and after; one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn metrics_expose_the_documented_names_with_exact_counts_after_a_small_run() {
    let _serial = SERIAL.lock().await;
    bidorch::metrics::install();
    let locks: Arc<dyn LockStore> = Arc::new(MeteredLockStore::new(
        Arc::new(MemoryLockStore::new()),
        "memory",
    ));
    let app = Embedded::start(&["opsmk"], locks.clone()).await;
    let ops = Ops::serve(Readiness {
        locks: locks.clone(),
        ledger: app.ledger.ledger.clone(),
        consuming: Arc::new(AtomicBool::new(true)),
        gate: Default::default(),
        breakers: bidorch::flow::Breakers::new(Default::default()),
    })
    .await;
    let before = ops.metrics().await;
    // One at a time (prefetch 1), in this order: job_3 meets a 503 and is retried, job_1 is
    // placed and then found final, job_2 is under budget, then a poison body.
    app.sandbox.fail_next(Fault::unavailable());
    let none = headers(&[]);
    app.broker
        .publish(posting("opsmk", "job_3", "900"), none.clone());
    app.broker
        .publish(posting("opsmk", "job_1", "900"), none.clone());
    app.broker
        .publish(posting("opsmk", "job_1", "900"), none.clone());
    app.broker
        .publish(posting("opsmk", "job_2", "50"), none.clone());
    app.broker.publish(b"{not json".to_vec(), none);

    let report = app.run_until_drained(1).await;

    assert_eq!(report.settled, 6);
    let after = ops.metrics().await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    let m = ("marketplace", "opsmk");
    assert_eq!(d("bidorch_postings_received_total", &[m]), 5.0);
    assert_eq!(
        d(
            "bidorch_postings_received_total",
            &[("marketplace", "unknown")]
        ),
        1.0
    );
    for (outcome, count) in [
        ("placed", 2.0),
        ("duplicate", 1.0),
        ("skipped", 1.0),
        ("transient", 1.0),
    ] {
        assert_eq!(
            d("bidorch_outcomes_total", &[m, ("outcome", outcome)]),
            count,
            "outcome {outcome}"
        );
    }
    assert_eq!(
        d(
            "bidorch_outcomes_total",
            &[("marketplace", "unknown"), ("outcome", "poison")]
        ),
        1.0
    );
    assert_eq!(
        d(
            "bidorch_retries_total",
            &[("reason", "marketplace_transient")]
        ),
        1.0
    );
    assert_eq!(
        d("bidorch_dead_letters_total", &[("reason", "invalid_json")]),
        1.0
    );
    assert_eq!(
        d("bidorch_pipeline_seconds_count", &[("outcome", "placed")]),
        2.0
    );
    assert_eq!(
        d(
            "bidorch_marketplace_request_seconds_count",
            &[m, ("result", "placed")]
        ),
        2.0
    );
    assert_eq!(
        d(
            "bidorch_marketplace_request_seconds_count",
            &[m, ("result", "transient")]
        ),
        1.0
    );
    // Leases: job_3 twice, job_2 once, job_1 once — or twice when its copy is taken while the
    // first is still settling (the lease is released after the ack; the copy then stops at the
    // claim instead of the ledger lookup). Every attempt succeeds either way.
    let memory = [("backend", "memory")];
    let attempts = d("bidorch_lock_attempts_total", &memory);
    assert!(
        attempts == 4.0 || attempts == 5.0,
        "{attempts} lease attempts"
    );
    assert_eq!(d("bidorch_lock_successes_total", &memory), attempts);
    assert_eq!(d("bidorch_lock_conflicts_total", &memory), 0.0);
    assert_eq!(d("bidorch_lock_timeouts_total", &memory), 0.0);
    assert_eq!(d("bidorch_redis_errors_total", &memory), 0.0);
    assert_eq!(d("bidorch_lock_acquire_seconds_count", &memory), attempts);
    assert_eq!(after.get(IN_FLIGHT, &[]), 0.0);
    assert_eq!(after.get(LEASES_HELD, &[]), 0.0);
    // Every documented name that this run exercised is exported with its documented type.
    let not_exercised = [
        "bidorch_lock_conflicts_total",
        "bidorch_lock_timeouts_total",
        "bidorch_redis_errors_total",
        // Labelled by what is paused: present once something has been.
        bidorch::metrics::PAUSED,
        bidorch::metrics::MISMATCHES,
        // Labelled by marketplace: present once one is paused by hand, or has a budget.
        bidorch::metrics::MANUAL_PAUSE,
        bidorch::metrics::BUDGET_CREDITS,
        bidorch::metrics::BUDGET_REMAINING,
        // The lifecycle tasks run in worker processes (tests/it/retention.rs reads them there).
        bidorch::metrics::LEDGER_ROWS,
        bidorch::metrics::LEDGER_OLDEST,
        bidorch::metrics::LEDGER_RETENTION,
        bidorch::metrics::LEDGER_PRUNED,
        bidorch::metrics::AUTO_RECONCILED,
    ];
    for (name, kind, _, _) in CATALOGUE {
        if not_exercised.contains(name) {
            continue;
        }
        let expected = match kind {
            bidorch::metrics::Kind::Counter => "counter",
            bidorch::metrics::Kind::Gauge => "gauge",
            bidorch::metrics::Kind::Histogram => "histogram",
        };
        assert_eq!(
            after.types.get(*name).map(String::as_str),
            Some(expected),
            "{name} in /metrics"
        );
    }
    // No series carries a posting id.
    assert!(
        after
            .values
            .iter()
            .all(|(_, labels, _)| labels.values().all(|v| !v.starts_with("job_"))),
    );

    // The leases-held gauge counts a lease from start to release.
    let lease = locks
        .try_acquire(
            &PostingKey::new("opsmk", "job_gauge").unwrap(),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .unwrap();
    let held = Renewals::new().hold(locks.clone(), lease);
    assert_eq!(ops.metrics().await.get(LEASES_HELD, &[]), 1.0);
    held.release().await.unwrap();
    assert_eq!(ops.metrics().await.get(LEASES_HELD, &[]), 0.0);
}

/// The value of a metric line `name{labels} value` in a Prometheus text rendering.
fn value(rendered: &str, series: &str) -> Option<f64> {
    rendered
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn lock_counters_and_histogram_are_exported_under_their_names() {
    let _serial = SERIAL.lock().await;
    let handle = bidorch::metrics::install();
    let before = handle.render();

    let memory = MeteredLockStore::new(Arc::new(MemoryLockStore::new()), "memory");
    let k = key("upwork", "exported");
    let lease = memory
        .try_acquire(&k, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(
        memory
            .try_acquire(&k, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    memory.release(&lease).await.unwrap();

    // A Redis that refuses connections (an error), and one that accepts and never answers (a
    // timeout: counted as both).
    let redis_at = |url: String| bidorch::config::RedisSettings {
        url: bidorch::config::SecretUrl::new(url),
        key_prefix: String::new(),
    };
    let down = MeteredLockStore::new(
        Arc::new(RedisLockStore::new(&redis_at("redis://127.0.0.1:1/0".into())).unwrap()),
        "redis",
    );
    assert!(down.try_acquire(&k, Duration::from_secs(5)).await.is_err());
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("redis://{}/0", silent.local_addr().unwrap());
    let _held_open = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let options = RedisOptions {
        connect_timeout: Duration::from_millis(100),
        response_timeout: Duration::from_millis(100),
        tls_ca_pem: None,
    };
    let hung = MeteredLockStore::new(
        Arc::new(RedisLockStore::with_options(&redis_at(silent_url), &options).unwrap()),
        "redis",
    );
    let err = hung
        .try_acquire(&k, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::TimedOut { .. }), "{err}");

    let text = handle.render();
    let delta = |series: &str| Some(value(&text, series)? - value(&before, series).unwrap_or(0.0));
    let m = memory.metrics();
    let series = |name: &str, backend: &str| delta(&format!("{name}{{backend=\"{backend}\"}}"));
    assert_eq!(
        series("bidorch_lock_attempts_total", "memory"),
        Some(m.lock_attempts as f64)
    );
    assert_eq!(series("bidorch_lock_successes_total", "memory"), Some(1.0));
    assert_eq!(
        series("bidorch_lock_conflicts_total", "memory"),
        Some(m.lock_conflicts as f64)
    );
    assert_eq!(series("bidorch_lock_timeouts_total", "redis"), Some(1.0));
    assert_eq!(series("bidorch_redis_errors_total", "redis"), Some(2.0));
    assert_eq!(series("bidorch_lock_attempts_total", "redis"), Some(2.0));
    assert_eq!(
        series("bidorch_lock_acquire_seconds_count", "memory"),
        Some(m.acquire_latency.count as f64),
        "{text}"
    );
}
