//! The lock port's contract, one generic suite run against both stores (memory and real Redis):
//! mutual exclusion, holder-only release and extend, TTL expiry, inspection, independence of keys.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use bidorch::lock::{Lease, LockError, LockStore, Release};
use support::lock::{Backend, key};

const TTL: Duration = Duration::from_secs(10);

/// N concurrent contenders on one key: exactly one wins, and it is the recorded holder.
async fn one_of_many_contenders_wins(b: &Backend) {
    let k = key("upwork", "contended");
    let stores: Vec<Arc<dyn LockStore>> = (0..16).map(|i| b.instance(&format!("i{i}"))).collect();
    let tries = stores.iter().map(|s| {
        let (s, k) = (s.clone(), k.clone());
        tokio::spawn(async move { s.try_acquire(&k, TTL).await })
    });
    let mut winners = Vec::new();
    for t in tries {
        if let Some(lease) = t.await.unwrap().unwrap() {
            winners.push(lease);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one contender wins");
    let holder = stores[0].holder(&k).await.unwrap().expect("held");
    assert_eq!(holder.token, winners[0].token);
}

/// Only the holder's token releases or extends; the real holder keeps the lease meanwhile.
async fn wrong_holder_cannot_release_or_extend(b: &Backend) {
    let (a, other) = (b.instance("a"), b.instance("b"));
    let k = key("upwork", "wrong_holder");
    let lease = a.try_acquire(&k, TTL).await.unwrap().expect("free key");
    let forged = Lease {
        token: "someone-else".to_owned(),
        ..lease.clone()
    };
    assert_eq!(other.release(&forged).await.unwrap(), Release::NotOwned);
    assert!(!other.extend(&forged, TTL).await.unwrap());
    assert_eq!(other.holder(&k).await.unwrap().unwrap().token, lease.token);
    assert_eq!(a.release(&lease).await.unwrap(), Release::Released);
    assert_eq!(a.release(&lease).await.unwrap(), Release::NotOwned);
}

/// A released lease is free for the next taker at once.
async fn released_lease_can_be_retaken(b: &Backend) {
    let (a, other) = (b.instance("a"), b.instance("b"));
    let k = key("upwork", "retake");
    let lease = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    assert!(other.try_acquire(&k, TTL).await.unwrap().is_none());
    a.release(&lease).await.unwrap();
    assert!(other.try_acquire(&k, TTL).await.unwrap().is_some());
}

/// An expired lease can be taken; its former holder can then neither extend nor release it.
async fn expired_lease_can_be_taken(b: &Backend) {
    let (a, other) = (b.instance("a"), b.instance("b"));
    let k = key("upwork", "expiry");
    let old = a
        .try_acquire(&k, Duration::from_millis(150))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the TTL expiry is the event
    let new = other.try_acquire(&k, TTL).await.unwrap().expect("expired");
    assert!(!a.extend(&old, TTL).await.unwrap());
    assert_eq!(a.release(&old).await.unwrap(), Release::NotOwned);
    assert_eq!(other.holder(&k).await.unwrap().unwrap().token, new.token);
}

/// `extend` resets the TTL: the lease outlives its original TTL.
async fn extend_resets_the_ttl(b: &Backend) {
    let a = b.instance("a");
    let k = key("upwork", "extend");
    let lease = a
        .try_acquire(&k, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert!(a.extend(&lease, TTL).await.unwrap());
    let left = a.holder(&k).await.unwrap().unwrap().ttl_left;
    assert!(left > Duration::from_secs(5) && left <= TTL, "{left:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.holder(&k).await.unwrap().unwrap().token, lease.token);
}

/// `holder` shows nobody on a free key, and the token and remaining TTL on a held one.
async fn holder_reports_token_and_ttl(b: &Backend) {
    let a = b.instance("inspector");
    let k = key("upwork", "inspect");
    assert!(a.holder(&k).await.unwrap().is_none());
    let lease = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    assert!(lease.token.starts_with("inspector:") || lease.token.starts_with("memory:"));
    let info = a.holder(&k).await.unwrap().unwrap();
    assert_eq!(info.token, lease.token);
    assert!(info.ttl_left > Duration::ZERO && info.ttl_left <= TTL);
    a.release(&lease).await.unwrap();
    assert!(a.holder(&k).await.unwrap().is_none());
}

/// Different postings, and the same posting id on different marketplaces, do not contend.
async fn postings_and_marketplaces_are_independent(b: &Backend) {
    let a = b.instance("a");
    for k in [
        key("upwork", "job_1"),
        key("upwork", "job_2"),
        key("freelancer", "job_1"),
    ] {
        assert!(a.try_acquire(&k, TTL).await.unwrap().is_some(), "{k}");
    }
}

/// Tokens are unique per acquisition, even for the same instance and key.
async fn tokens_are_unique_per_acquisition(b: &Backend) {
    let a = b.instance("a");
    let k = key("upwork", "tokens");
    let first = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    a.release(&first).await.unwrap();
    let second = a.try_acquire(&k, TTL).await.unwrap().unwrap();
    assert_ne!(first.token, second.token);
    // The first token cannot touch the second lease.
    assert_eq!(a.release(&first).await.unwrap(), Release::NotOwned);
}

/// A zero TTL is a caller error, not a lease that never expires.
async fn zero_ttl_is_rejected(b: &Backend) {
    let a = b.instance("a");
    let err = a.try_acquire(&key("upwork", "zero"), Duration::ZERO).await;
    assert!(matches!(err, Err(LockError::Config(_))), "{err:?}");
}

/// Many calls through one store at once (a worker's postings in flight, which a batching store
/// sends as one pipeline): each gets its own answer — one winner per key, and only the winner's
/// token releases it.
async fn concurrent_calls_through_one_store_each_get_their_own_answer(b: &Backend) {
    let store = b.instance("a");
    let tries: Vec<_> = (0..24)
        .map(|i| {
            let (store, k) = (store.clone(), key("upwork", &format!("many_{}", i % 8)));
            tokio::spawn(async move { (k.clone(), store.try_acquire(&k, TTL).await.unwrap()) })
        })
        .collect();
    let mut won = std::collections::BTreeMap::new();
    for t in tries {
        let (k, lease) = t.await.unwrap();
        if let Some(lease) = lease {
            assert!(won.insert(k, lease).is_none(), "two winners for one key");
        }
    }
    assert_eq!(won.len(), 8, "one winner per key");
    let releases: Vec<_> = won
        .into_values()
        .map(|lease| {
            let store = store.clone();
            tokio::spawn(async move { store.release(&lease).await.unwrap() })
        })
        .collect();
    for r in releases {
        assert_eq!(r.await.unwrap(), Release::Released);
    }
}

/// `health` succeeds on a reachable store.
async fn health_is_ok(b: &Backend) {
    b.instance("a").health().await.unwrap();
}

macro_rules! contract {
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
        mod redis_batched {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = super::Backend::redis_batched().await else { return };
                    super::$case(&backend).await;
                }
            )*
        }
    };
}

contract!(
    one_of_many_contenders_wins,
    wrong_holder_cannot_release_or_extend,
    released_lease_can_be_retaken,
    expired_lease_can_be_taken,
    extend_resets_the_ttl,
    holder_reports_token_and_ttl,
    postings_and_marketplaces_are_independent,
    tokens_are_unique_per_acquisition,
    zero_ttl_is_rejected,
    concurrent_calls_through_one_store_each_get_their_own_answer,
    health_is_ok,
);
