//! The lock counters reach the Prometheus exporter under their documented names, with the same
//! values as the in-process snapshot (both are bumped in one place).

mod lock_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use bidorch::lock::{LockStore, MemoryLockStore, MeteredLockStore, RedisLockStore};
use lock_support::key;
use metrics_exporter_prometheus::PrometheusBuilder;

/// The value of a metric line `name{labels} value` in a Prometheus text rendering.
fn value(rendered: &str, series: &str) -> Option<f64> {
    rendered
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// One test only: the global recorder is process-wide.
#[tokio::test]
async fn counters_and_histogram_are_exported_under_their_names() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("first recorder of this test binary");

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
    let timed_out = memory
        .acquire(&k, Duration::from_secs(5), Duration::from_millis(60))
        .await;
    assert!(timed_out.is_err());
    memory.release(&lease).await.unwrap();

    let settings = bidorch::config::RedisSettings {
        url: bidorch::config::SecretUrl::new("redis://127.0.0.1:1/0"),
        key_prefix: String::new(),
    };
    let down = MeteredLockStore::new(Arc::new(RedisLockStore::new(&settings).unwrap()), "redis");
    assert!(down.try_acquire(&k, Duration::from_secs(5)).await.is_err());

    let text = handle.render();
    let m = memory.metrics();
    let series =
        |name: &str, backend: &str| value(&text, &format!("{name}{{backend=\"{backend}\"}}"));
    assert_eq!(
        series("bidorch_lock_attempts_total", "memory"),
        Some(m.lock_attempts as f64)
    );
    assert_eq!(series("bidorch_lock_successes_total", "memory"), Some(1.0));
    assert_eq!(
        series("bidorch_lock_conflicts_total", "memory"),
        Some(m.lock_conflicts as f64)
    );
    assert_eq!(series("bidorch_lock_timeouts_total", "memory"), Some(1.0));
    assert_eq!(series("bidorch_redis_errors_total", "redis"), Some(1.0));
    assert_eq!(series("bidorch_lock_attempts_total", "redis"), Some(1.0));
    assert_eq!(
        series("bidorch_lock_acquire_seconds_count", "memory"),
        Some(m.acquire_latency.count as f64),
        "{text}"
    );
}
