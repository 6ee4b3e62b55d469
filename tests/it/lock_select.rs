//! Backend selection from configuration, including the original system's environment
//! variables, and failing closed: no in-process locks for RabbitMQ workers, no fall-back to
//! in-process locks when Redis is down.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use bidorch::app::{StartError, System};
use bidorch::config::Settings;
use bidorch::lock::{LockError, LockStore, MeteredLockStore};
use support::lock::{RedisPrefix, key};

fn settings(pairs: &[(&str, &str)]) -> Settings {
    let env: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load_from(None, &env).expect("valid test settings")
}

/// The composition root's refusal to start these settings.
async fn refusal(settings: &Settings) -> String {
    match System::build(settings).await {
        Err(StartError::Unsafe(why)) => why,
        Err(other) => panic!("expected a refusal to start, got {other}"),
        Ok(_) => panic!("expected a refusal to start, got a system"),
    }
}

fn store(s: &Settings) -> std::sync::Arc<MeteredLockStore> {
    bidorch::app::locks(s.lock.kind, &s.redis, &s.instance_id())
        .unwrap()
        .locks
}

#[tokio::test]
async fn memory_locks_are_refused_for_a_rabbitmq_worker_with_the_reason() {
    let why = refusal(&settings(&[("BIDORCH__LOCK__KIND", "memory")])).await;
    assert!(why.contains("source.kind = \"amqp\""), "{why}");
    assert!(why.contains("other workers"), "{why}");
    assert!(why.contains("lock.kind = \"redis\""), "{why}");
}

#[tokio::test]
async fn use_redis_locks_false_is_refused_for_a_rabbitmq_worker() {
    let why = refusal(&settings(&[("USE_REDIS_LOCKS", "false")])).await;
    assert!(why.contains("memory"), "{why}");
}

#[tokio::test]
async fn memory_locks_serve_the_embedded_mode() {
    let s = settings(&[
        ("BIDORCH__LOCK__KIND", "memory"),
        ("BIDORCH__SOURCE__KIND", "memory"),
        ("BIDORCH__WORKER__INSTANCE_ID", "embedded-1"),
    ]);
    let store = store(&s);
    let lease = store
        .try_acquire(&key("upwork", "embedded"), Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(lease.token.starts_with("embedded-1:"), "{}", lease.token);
    assert_eq!(store.metrics().lock_successes, 1);
}

#[tokio::test]
async fn legacy_redis_variables_select_a_working_redis_store() {
    let Some(prefix) = RedisPrefix::new().await else {
        return;
    };
    let u = url::Url::parse(&support::redis_url()).unwrap();
    let port = u.port().unwrap_or(6379).to_string();
    let s = settings(&[
        ("USE_REDIS_LOCKS", "true"),
        ("REDIS_HOST", u.host_str().unwrap()),
        ("REDIS_PORT", &port),
        ("REDIS_DB", "0"),
        ("BIDORCH__REDIS__KEY_PREFIX", &prefix.prefix),
        ("BIDORCH__WORKER__INSTANCE_ID", "legacy-env"),
    ]);
    let store = store(&s);
    let k = key("upwork", "legacy");
    let lease = store
        .try_acquire(&k, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(lease.token.starts_with("legacy-env:"));
    // It really is in Redis, under the configured prefix.
    let mut raw = prefix.raw();
    let value: Option<String> = redis::cmd("GET")
        .arg(prefix.redis_key(&k))
        .query(&mut raw)
        .unwrap();
    assert_eq!(value, Some(lease.token.clone()));
}

#[tokio::test]
async fn a_redis_outage_never_degrades_to_in_process_locks() {
    // Redis configured but down: the store builds (the worker can report not-ready and
    // retry postings), and every acquisition fails instead of succeeding locally.
    let s = settings(&[("REDIS_URL", "redis://127.0.0.1:1/0")]);
    let store = store(&s);
    let k = key("upwork", "outage");
    for _ in 0..3 {
        let result = store.try_acquire(&k, Duration::from_secs(5)).await;
        assert!(
            matches!(result, Err(LockError::Unavailable(_))),
            "{result:?}"
        );
    }
    assert!(store.health().await.is_err());
    let m = store.metrics();
    assert_eq!((m.lock_successes, m.redis_errors), (0, 4));
}
