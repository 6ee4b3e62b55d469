//! The original `BidLockManager` suite's multi-instance scenarios, ported onto the metered lease
//! API (`acquire` with backoff, `with_lease`, metrics) and run against both stores. Scenarios of
//! that suite about the bare port (wrong holder, independence, expiry) live in `lock_contract.rs`.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bidorch::lock::{AcquireError, LockStore, Release};
use support::lock::{Backend, eventually, key};

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
                let lease = store.acquire(&k, TTL, WAIT).await.expect("gets its turn");
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
    let lease = survivor.acquire(&k, TTL, WAIT).await.expect("freed by TTL");
    let m = survivor.metrics();
    assert!(m.lock_conflicts >= 1, "it had to wait: {m:?}");
    assert_eq!(m.lock_successes, 1);
    survivor.release(&lease).await.unwrap();
}

/// `acquire` gives up after its timeout while another holder keeps the lease.
async fn acquire_times_out_while_held(b: &Backend) {
    let (a, other) = (b.metered("a"), b.metered("b"));
    let k = key("upwork", "timeout");
    let _held = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    let err = other
        .acquire(&k, TTL, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, AcquireError::TimedOut { .. }), "{err}");
    assert!(err.is_retryable());
    let m = other.metrics();
    assert_eq!((m.lock_timeouts, m.lock_successes), (1, 0));
    assert!(m.lock_conflicts >= 2, "it retried with backoff: {m:?}");
    assert_eq!(m.lock_attempts, m.lock_conflicts);
}

/// A waiting `acquire` gets the lease once the holder releases it.
async fn waiting_acquire_gets_the_released_lease(b: &Backend) {
    let (a, other) = (b.metered("a"), b.metered("b"));
    let k = key("upwork", "handover");
    let lease = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    let waiter = {
        let (other, k) = (other.clone(), k.clone());
        tokio::spawn(async move { other.acquire(&k, TTL, WAIT).await })
    };
    assert!(eventually(SOON, || async { other.metrics().lock_conflicts >= 1 }).await);
    a.release(&lease).await.unwrap();
    let got = waiter.await.unwrap().expect("handed over");
    assert_eq!(other.holder(&k).await.unwrap().unwrap().token, got.token);
}

/// The scoped form runs the work under a live lease and releases it afterwards.
async fn scoped_form_releases_after_success(b: &Backend) {
    let a = b.metered("a");
    let k = key("upwork", "scoped_ok");
    let store = a.clone();
    let value = a
        .with_lease(&k, TTL, WAIT, async |held| {
            assert!(!held.is_lost());
            let holder = store.holder(&held.lease().key).await.unwrap().unwrap();
            assert_eq!(holder.token, held.lease().token);
            42
        })
        .await
        .unwrap();
    assert_eq!(value, 42);
    assert!(!a.is_held(&k).await.unwrap());
}

/// The scoped form releases when the work returns an error.
async fn scoped_form_releases_on_error(b: &Backend) {
    let a = b.metered("a");
    let k = key("upwork", "scoped_err");
    let result: Result<(), &str> = a
        .with_lease(&k, TTL, WAIT, async |_| Err("bid failed"))
        .await
        .unwrap();
    assert_eq!(result, Err("bid failed"));
    assert!(!a.is_held(&k).await.unwrap());
}

/// The scoped form releases when the work panics.
async fn scoped_form_releases_on_panic(b: &Backend) {
    let a = b.metered("a");
    let k = key("upwork", "scoped_panic");
    let task = {
        let (a, k) = (a.clone(), k.clone());
        tokio::spawn(async move {
            a.with_lease(&k, TTL, WAIT, async |_| -> () { panic!("work panicked") })
                .await
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert!(eventually(SOON, || async { !a.is_held(&k).await.unwrap() }).await);
}

/// The scoped form releases when its task is cancelled mid-work.
async fn scoped_form_releases_on_cancellation(b: &Backend) {
    let a = b.metered("a");
    let k = key("upwork", "scoped_cancel");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let task = {
        let (a, k) = (a.clone(), k.clone());
        tokio::spawn(async move {
            a.with_lease(&k, TTL, WAIT, async |_| {
                let _ = started_tx.send(());
                std::future::pending::<()>().await
            })
            .await
        })
    };
    started_rx.await.unwrap();
    assert!(a.is_held(&k).await.unwrap());
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(eventually(SOON, || async { !a.is_held(&k).await.unwrap() }).await);
}

/// The scoped form does not run the work when the lease stays busy.
async fn scoped_form_times_out_without_running(b: &Backend) {
    let (a, other) = (b.metered("a"), b.metered("b"));
    let k = key("upwork", "scoped_busy");
    let _held = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    let ran = Arc::new(Mutex::new(false));
    let flag = ran.clone();
    let result = other
        .with_lease(&k, TTL, Duration::from_millis(200), async move |_| {
            *flag.lock().unwrap() = true;
        })
        .await;
    assert!(matches!(result, Err(AcquireError::TimedOut { .. })));
    assert!(!*ran.lock().unwrap());
}

/// The five counters and the latency count add up over a known sequence.
async fn metrics_count_correctly(b: &Backend) {
    let (a, other) = (b.metered("a"), b.metered("b"));
    let k = key("upwork", "metrics");
    let lease = a.try_acquire(&k, TTL).await.unwrap().unwrap(); // a: success
    assert!(other.try_acquire(&k, TTL).await.unwrap().is_none()); // b: conflict
    let timed_out = other.acquire(&k, TTL, Duration::from_millis(200)).await; // b: conflicts, timeout
    assert!(timed_out.is_err());
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
    assert_eq!(mb.lock_timeouts, 1);
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
    assert!(!stores[0].is_held(&k).await.unwrap());
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
    acquire_times_out_while_held,
    waiting_acquire_gets_the_released_lease,
    scoped_form_releases_after_success,
    scoped_form_releases_on_error,
    scoped_form_releases_on_panic,
    scoped_form_releases_on_cancellation,
    scoped_form_times_out_without_running,
    metrics_count_correctly,
    rapid_acquire_release_cycles,
);
