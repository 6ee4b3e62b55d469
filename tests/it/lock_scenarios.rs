//! The original `BidLockManager` suite's multi-instance scenarios, ported onto the lease port,
//! [`HeldLease`] and the metered store, and run against both stores. Contenders wait by polling
//! `try_acquire` (`support::lock::acquire_waiting`): the worker itself never waits for a busy
//! lease, it retries the message later. Scenarios about the bare port (wrong holder,
//! independence, expiry) live in `lock_contract.rs`.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bidorch::lock::{LockStore, Release, Renewals};
use support::lock::{Backend, acquire_waiting, eventually, is_held, key};

const TTL: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(10);
const SOON: Duration = Duration::from_secs(5);

/// Two instances on one posting: one acquires, the other sees a conflict.
async fn two_instances_one_posting_one_acquires(b: &Backend) {
    let (a, other) = (b.metered("a"), b.metered("b"));
    let k = key("upwork", "two");
    let (ra, rb) = tokio::join!(a.try_acquire(&k, TTL), other.try_acquire(&k, TTL));
    let won = [ra.unwrap(), rb.unwrap()];
    assert_eq!(won.iter().filter(|l| l.is_some()).count(), 1);
    let (ma, mb) = (a.metrics(), other.metrics());
    assert_eq!(ma.lock_successes + mb.lock_successes, 1);
    assert_eq!(ma.lock_conflicts + mb.lock_conflicts, 1);
}

/// Three instances queue on one posting: each gets it in turn, never two at once.
async fn three_instances_acquire_sequentially(b: &Backend) {
    let k = key("upwork", "queue");
    let log = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let (store, k, log) = (b.metered(name), k.clone(), log.clone());
            tokio::spawn(async move {
                let lease = acquire_waiting(&*store, &k, TTL, WAIT)
                    .await
                    .expect("gets its turn");
                log.lock().unwrap().push(format!("+{name}"));
                tokio::time::sleep(Duration::from_millis(100)).await; // work while holding
                log.lock().unwrap().push(format!("-{name}"));
                assert_eq!(store.release(&lease).await.unwrap(), Release::Released);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 6, "{log:?}");
    for turn in log.chunks(2) {
        assert_eq!(turn[0][1..], turn[1][1..], "interleaved holders: {log:?}");
        assert!(
            turn[0].starts_with('+') && turn[1].starts_with('-'),
            "{log:?}"
        );
    }
}

/// An instance that dies holding the lease (no release) blocks others only until the TTL.
async fn instance_failure_recovers_after_ttl(b: &Backend) {
    let k = key("upwork", "crash");
    {
        let doomed = b.metered("doomed");
        doomed
            .try_acquire(&k, Duration::from_millis(300))
            .await
            .unwrap()
            .unwrap();
        // Dropped without releasing: the process "crashed".
    }
    let survivor = b.metered("survivor");
    let lease = acquire_waiting(&*survivor, &k, TTL, WAIT)
        .await
        .expect("freed by TTL");
    let m = survivor.metrics();
    assert!(m.lock_conflicts >= 1, "it had to wait: {m:?}");
    assert_eq!(m.lock_successes, 1);
    survivor.release(&lease).await.unwrap();
}

/// A contender never gets the lease while another holder keeps it.
async fn contender_waits_while_held(b: &Backend) {
    let (a, other) = (b.metered("a"), b.metered("b"));
    let k = key("upwork", "timeout");
    let _held = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    let got = acquire_waiting(&*other, &k, TTL, Duration::from_millis(300)).await;
    assert!(got.is_none());
    let m = other.metrics();
    assert_eq!(m.lock_successes, 0);
    assert!(m.lock_conflicts >= 2, "it tried again: {m:?}");
    assert_eq!(m.lock_attempts, m.lock_conflicts);
}

/// A waiting contender gets the lease once the holder releases it.
async fn waiting_contender_gets_the_released_lease(b: &Backend) {
    let (a, other) = (b.metered("a"), b.metered("b"));
    let k = key("upwork", "handover");
    let lease = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    let waiter = {
        let (other, k) = (other.clone(), k.clone());
        tokio::spawn(async move { acquire_waiting(&*other, &k, TTL, WAIT).await })
    };
    eventually(SOON, "other.metrics().lock_conflicts >= 1", || async {
        other.metrics().lock_conflicts >= 1
    })
    .await;
    a.release(&lease).await.unwrap();
    let got = waiter.await.unwrap().expect("handed over");
    assert_eq!(other.holder(&k).await.unwrap().unwrap().token, got.token);
}

/// A held lease is renewed while work runs and released explicitly afterwards.
async fn held_lease_is_ours_until_released(b: &Backend) {
    let a = b.metered("a");
    let k = key("upwork", "scoped_ok");
    let lease = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    let held = Renewals::new().hold(a.clone(), lease);
    assert!(!held.is_lost());
    let holder = a.holder(&held.lease().key).await.unwrap().unwrap();
    assert_eq!(holder.token, held.lease().token);
    assert_eq!(held.release().await.unwrap(), Release::Released);
    assert!(!is_held(&*a, &k).await);
}

/// A held lease dropped on an error path is released in the background.
async fn held_lease_is_released_when_dropped(b: &Backend) {
    let a = b.metered("a");
    let k = key("upwork", "scoped_err");
    let lease = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    let work = async {
        let _held = Renewals::new().hold(a.clone(), lease);
        Err::<(), _>("bid failed")
    };
    assert_eq!(work.await, Err("bid failed"));
    eventually(SOON, "!is_held(&*a, &k).await", || async {
        !is_held(&*a, &k).await
    })
    .await;
}

/// A held lease is released when the work holding it panics.
async fn held_lease_is_released_on_panic(b: &Backend) {
    let a = b.metered("a");
    let k = key("upwork", "scoped_panic");
    let lease = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    let task = {
        let a = a.clone();
        tokio::spawn(async move {
            let _held = Renewals::new().hold(a, lease);
            panic!("work panicked");
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    eventually(SOON, "!is_held(&*a, &k).await", || async {
        !is_held(&*a, &k).await
    })
    .await;
}

/// A held lease is released when its task is cancelled mid-work.
async fn held_lease_is_released_on_cancellation(b: &Backend) {
    let a = b.metered("a");
    let k = key("upwork", "scoped_cancel");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let task = {
        let (a, k) = (a.clone(), k.clone());
        tokio::spawn(async move {
            let lease = a.try_acquire(&k, TTL).await.unwrap().unwrap();
            let _held = Renewals::new().hold(a, lease);
            let _ = started_tx.send(());
            std::future::pending::<()>().await
        })
    };
    started_rx.await.unwrap();
    assert!(is_held(&*a, &k).await);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    eventually(SOON, "!is_held(&*a, &k).await", || async {
        !is_held(&*a, &k).await
    })
    .await;
}

/// The five counters and the latency count add up over a known sequence.
async fn metrics_count_correctly(b: &Backend) {
    let (a, other) = (b.metered("a"), b.metered("b"));
    let k = key("upwork", "metrics");
    let lease = a.try_acquire(&k, TTL).await.unwrap().unwrap(); // a: success
    assert!(other.try_acquire(&k, TTL).await.unwrap().is_none()); // b: conflict
    let waited = acquire_waiting(&*other, &k, TTL, Duration::from_millis(200)).await; // b: conflicts
    assert!(waited.is_none());
    a.release(&lease).await.unwrap();
    let got = other.try_acquire(&k, TTL).await.unwrap().unwrap(); // b: success
    other.release(&got).await.unwrap();

    let ma = a.metrics();
    assert_eq!(
        (ma.lock_attempts, ma.lock_successes, ma.lock_conflicts),
        (1, 1, 0)
    );
    let mb = other.metrics();
    assert_eq!(mb.lock_successes, 1);
    assert_eq!(mb.lock_timeouts, 0);
    assert!(mb.lock_conflicts >= 3, "{mb:?}");
    assert_eq!(mb.lock_attempts, mb.lock_successes + mb.lock_conflicts);
    assert_eq!(mb.redis_errors, 0);
    assert_eq!(mb.acquire_latency.count, mb.lock_attempts);
    assert!(mb.acquire_latency.p50 <= mb.acquire_latency.p99);
}

/// Rapid acquire/release cycles by alternating instances stay correct.
async fn rapid_acquire_release_cycles(b: &Backend) {
    let stores = [b.metered("a"), b.metered("b")];
    let k = key("upwork", "rapid");
    for i in 0..300 {
        let store = &stores[i % 2];
        let lease = store.try_acquire(&k, TTL).await.unwrap().expect("free");
        assert_eq!(store.release(&lease).await.unwrap(), Release::Released);
    }
    assert!(!is_held(&*stores[0], &k).await);
    let total: u64 = stores.iter().map(|s| s.metrics().lock_successes).sum();
    assert_eq!(total, 300);
}

macro_rules! scenarios {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(&super::Backend::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = super::Backend::redis().await else { return };
                    super::$case(&backend).await;
                }
            )*
        }
    };
}

scenarios!(
    two_instances_one_posting_one_acquires,
    three_instances_acquire_sequentially,
    instance_failure_recovers_after_ttl,
    contender_waits_while_held,
    waiting_contender_gets_the_released_lease,
    held_lease_is_ours_until_released,
    held_lease_is_released_when_dropped,
    held_lease_is_released_on_panic,
    held_lease_is_released_on_cancellation,
    metrics_count_correctly,
    rapid_acquire_release_cycles,
);
