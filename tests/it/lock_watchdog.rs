//! The watchdog: renewal keeps a lease alive across several TTLs, and a holder whose lease may
//! be gone — paused past its TTL, renewals blocked or failing, key taken by another — is told so.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bidorch::lock::{HolderInfo, Lease, LockError, LockStore, MemoryLockStore, Release, Renewals};
use bidorch::posting::PostingKey;
use support::lock::{Backend, RedisPrefix, key};

/// A store whose renewals can be made to hang (a stalled network) or fail (Redis down), and
/// that counts them.
struct FaultyRenewals {
    inner: Arc<dyn LockStore>,
    hang: AtomicBool,
    fail: AtomicBool,
    extends: AtomicUsize,
}

impl FaultyRenewals {
    fn new(inner: Arc<dyn LockStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            hang: AtomicBool::new(false),
            fail: AtomicBool::new(false),
            extends: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl LockStore for FaultyRenewals {
    async fn try_acquire(&self, k: &PostingKey, ttl: Duration) -> Result<Option<Lease>, LockError> {
        self.inner.try_acquire(k, ttl).await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        self.extends.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(LockError::Unavailable("injected outage".into()));
        }
        self.inner.extend(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<Release, LockError> {
        self.inner.release(lease).await
    }
    async fn holder(&self, k: &PostingKey) -> Result<Option<HolderInfo>, LockError> {
        self.inner.holder(k).await
    }
    async fn health(&self) -> Result<(), LockError> {
        self.inner.health().await
    }
}

/// Renewal every TTL/3 keeps the lease ours across five TTLs; nobody else can take it.
async fn renewal_keeps_a_lease_past_several_ttls(b: &Backend) {
    let (a, other) = (b.instance("a"), b.instance("b"));
    let k = key("upwork", "renewed");
    let ttl = Duration::from_millis(300);
    let held = Renewals::new().hold(a.clone(), a.try_acquire(&k, ttl).await.unwrap().unwrap());
    tokio::time::sleep(ttl * 5).await; // the passing TTLs are the event
    assert!(!held.is_lost());
    assert!(other.try_acquire(&k, ttl).await.unwrap().is_none());
    assert_eq!(
        a.holder(&k).await.unwrap().unwrap().token,
        held.lease().token
    );
    assert_eq!(held.release().await.unwrap(), Release::Released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_renewal_keeps_a_lease_past_several_ttls() {
    let Some(b) = Backend::redis().await else {
        return;
    };
    renewal_keeps_a_lease_past_several_ttls(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_renewal_keeps_a_lease_past_several_ttls() {
    renewal_keeps_a_lease_past_several_ttls(&Backend::memory()).await;
}

#[tokio::test(start_paused = true)]
async fn memory_renewal_keeps_a_lease_for_an_hour_of_paused_time() {
    let store: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    let k = key("upwork", "long_bid");
    let held = Renewals::new().hold(
        store.clone(),
        store
            .try_acquire(&k, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(3600)).await; // auto-advancing clock, renewer runs
    assert!(!held.is_lost());
    assert!(
        store
            .try_acquire(&k, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_paused_past_its_ttl_is_told_its_lease_is_lost() {
    let store: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    let k = key("upwork", "paused");
    let ttl = Duration::from_secs(30);
    let held = Renewals::new().hold(
        store.clone(),
        store.try_acquire(&k, ttl).await.unwrap().unwrap(),
    );

    // The whole process stops for two TTLs (GC, SIGSTOP, swap): the clock jumps at once and no
    // renewal could run in between.
    tokio::time::advance(ttl * 2).await;
    assert!(held.is_lost(), "the clock alone says the lease may be gone");
    let taker = store.try_acquire(&k, ttl).await.unwrap();
    assert!(taker.is_some(), "another holder takes the expired key");
    held.lost().await;
    assert_eq!(held.release().await.unwrap(), Release::NotOwned);
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_end_in_a_lost_lease_never_a_silent_hold() {
    let faulty = FaultyRenewals::new(Arc::new(MemoryLockStore::new()));
    let k = key("upwork", "outage");
    let ttl = Duration::from_secs(30);
    let lease = faulty.try_acquire(&k, ttl).await.unwrap().unwrap();
    faulty.fail.store(true, Ordering::SeqCst);
    let held = Renewals::new().hold(faulty.clone(), lease);
    held.lost().await; // resolves once renewals have failed for a whole TTL
    assert!(held.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holder_with_blocked_renewal_learns_another_took_over() {
    let Some(prefix) = RedisPrefix::new().await else {
        return;
    };
    let faulty = FaultyRenewals::new(prefix.store("stalled"));
    let rival = prefix.metered("rival");
    let k = key("upwork", "stalled");
    let ttl = Duration::from_millis(400);
    let held = Renewals::new().hold(
        faulty.clone(),
        faulty.try_acquire(&k, ttl).await.unwrap().unwrap(),
    );
    faulty.hang.store(true, Ordering::SeqCst);

    let rival_lease = support::lock::acquire_waiting(
        &*rival,
        &k,
        Duration::from_secs(10),
        Duration::from_secs(10),
    )
    .await
    .expect("the stalled lease expires");
    tokio::time::timeout(Duration::from_secs(5), held.lost())
        .await
        .expect("the stalled holder is told");
    assert!(held.is_lost());
    assert_eq!(held.release().await.unwrap(), Release::NotOwned);
    assert_eq!(
        rival.holder(&k).await.unwrap().unwrap().token,
        rival_lease.token
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holder_whose_key_was_taken_is_told_at_the_next_renewal() {
    let Some(prefix) = RedisPrefix::new().await else {
        return;
    };
    let (a, rival) = (prefix.store("a"), prefix.store("rival"));
    let k = key("upwork", "wiped");
    let ttl = Duration::from_secs(3);
    let held = Renewals::new().hold(a.clone(), a.try_acquire(&k, ttl).await.unwrap().unwrap());

    // A failover to a replica that never saw the lease: the key vanishes, a rival takes it.
    let _: i64 = redis::cmd("DEL")
        .arg(prefix.redis_key(&k))
        .query(&mut prefix.raw())
        .unwrap();
    assert!(rival.try_acquire(&k, ttl).await.unwrap().is_some());

    tokio::time::timeout(ttl, held.lost())
        .await
        .expect("the next renewal (within ttl/3) finds the key is not ours");
    assert!(held.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_held_lease_releases_it() {
    let Some(b) = Backend::redis().await else {
        return;
    };
    let a = b.instance("a");
    let k = key("upwork", "dropped");
    let held = Renewals::new().hold(
        a.clone(),
        a.try_acquire(&k, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap(),
    );
    drop(held);
    support::eventually(
        Duration::from_secs(5),
        "released in the background, not left to the 30 s TTL",
        || async { a.holder(&k).await.unwrap().is_none() },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_released_before_its_first_renewal_is_never_extended() {
    let store = FaultyRenewals::new(Arc::new(MemoryLockStore::new()));
    let renewals = Renewals::new();
    let ttl = Duration::from_secs(30);
    for id in ["quick_1", "quick_2"] {
        let k = key("upwork", id);
        let held = renewals.hold(
            store.clone(),
            store.try_acquire(&k, ttl).await.unwrap().unwrap(),
        );
        assert_eq!(held.release().await.unwrap(), Release::Released);
    }
    tokio::time::sleep(ttl * 4).await; // long past both first renewals
    assert_eq!(store.extends.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lease_due_before_the_others_is_renewed_in_time() {
    let store = FaultyRenewals::new(Arc::new(MemoryLockStore::new()));
    let renewals = Renewals::new();
    let (slow, fast) = (key("upwork", "slow"), key("upwork", "fast"));
    let (long, short) = (Duration::from_secs(30), Duration::from_secs(3));
    // The scheduler sleeps for the 30 s lease's first renewal (10 s) when the 3 s lease, due in
    // 1 s, arrives: it must be woken for it.
    let held_slow = renewals.hold(
        store.clone(),
        store.try_acquire(&slow, long).await.unwrap().unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await; // the scheduler settles into its sleep
    let held_fast = renewals.hold(
        store.clone(),
        store.try_acquire(&fast, short).await.unwrap().unwrap(),
    );
    tokio::time::sleep(long * 2).await;
    assert!(!held_fast.is_lost() && !held_slow.is_lost());
    for (k, ttl) in [(&fast, short), (&slow, long)] {
        assert!(
            store.try_acquire(k, ttl).await.unwrap().is_none(),
            "{k} is still held"
        );
    }
    assert!(
        store.extends.load(Ordering::SeqCst) >= 20,
        "every second for a minute, and more"
    );
    assert_eq!(held_fast.release().await.unwrap(), Release::Released);
    assert_eq!(held_slow.release().await.unwrap(), Release::Released);
}
