//! Stress: 64 tasks × many acquisitions over a few keys, with an independent per-key occupancy
//! counter (outside the lock store) proving no two holders ever overlap.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bidorch::lock::{LockStore, MeteredLockStore, Release};
use support::lock::{Backend, acquire_waiting, is_held, key};

const TASKS: usize = 64;
const ROUNDS: usize = 50;
const KEYS: usize = 4;

async fn no_two_holders_ever_overlap(b: &Backend) {
    let keys: Arc<Vec<_>> = Arc::new(
        (0..KEYS)
            .map(|i| key("upwork", &format!("hot_{i}")))
            .collect(),
    );
    let occupancy: Arc<Vec<AtomicUsize>> =
        Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let overlaps = Arc::new(AtomicU64::new(0));
    let stores: Vec<Arc<MeteredLockStore>> = (0..8)
        .map(|i| {
            Arc::new(MeteredLockStore::new(
                b.instance(&format!("inst{i}")),
                b.label(),
            ))
        })
        .collect();

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            // Eight tasks share each store (instance), as a worker's tasks share its connection.
            let store = stores[t % stores.len()].clone();
            let (keys, occupancy, overlaps) = (keys.clone(), occupancy.clone(), overlaps.clone());
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let i = (t + round) % KEYS;
                    let lease = acquire_waiting(
                        &*store,
                        &keys[i],
                        Duration::from_secs(30),
                        Duration::from_secs(60),
                    )
                    .await
                    .expect("acquired within the wait");
                    if occupancy[i].fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    // Hold across a scheduling point so an overlapping holder would be seen.
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    occupancy[i].fetch_sub(1, Ordering::SeqCst);
                    assert_eq!(store.release(&lease).await.unwrap(), Release::Released);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders overlapped");
    let successes: u64 = stores.iter().map(|s| s.metrics().lock_successes).sum();
    assert_eq!(successes, (TASKS * ROUNDS) as u64);
    let errors: u64 = stores.iter().map(|s| s.metrics().redis_errors).sum();
    assert_eq!(errors, 0);
    for k in keys.iter() {
        assert!(!is_held(&*stores[0], k).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_64_tasks_never_overlap() {
    let Some(b) = Backend::redis().await else {
        return;
    };
    no_two_holders_ever_overlap(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_64_tasks_never_overlap() {
    no_two_holders_ever_overlap(&Backend::memory()).await;
}
