//! Redis-specific lease behaviour: the key layout and TTL really written, failing closed when
//! Redis is unreachable, secrets kept out of errors, TLS, recovery after a restart, and Redis
//! Cluster (a private one-node cluster).

use crate::support;

use std::error::Error as _;
use std::time::Duration;

use bidorch::config::{RedisSettings, SecretUrl};
use bidorch::lock::{
    Lease, LockError, LockStore, MeteredLockStore, RedisLockStore, RedisOptions, Release,
};
use support::lock::{PrivateRedis, RedisPrefix, eventually, key};

const TTL: Duration = Duration::from_secs(10);

fn settings(url: &str) -> RedisSettings {
    RedisSettings {
        url: SecretUrl::new(url),
        key_prefix: "bidorch_lock_test_unreachable:".to_owned(),
    }
}

/// Display of an error and all its sources, as a log line with its cause chain would show it.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{e} / {e:?}");
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(" / {s} / {s:?}"));
        source = s.source();
    }
    text
}

#[tokio::test]
async fn lease_is_set_nx_px_under_the_hash_tagged_key() {
    let Some(prefix) = RedisPrefix::new().await else {
        return;
    };
    let store = prefix.store("layout");
    let k = key("upwork", "job_1");
    let lease = store.try_acquire(&k, TTL).await.unwrap().unwrap();

    let redis_key = format!("{}bid_lock:{{upwork:job_1}}", prefix.prefix);
    assert_eq!(store.key(&k), redis_key);
    let mut raw = prefix.raw();
    let value: Option<String> = redis::cmd("GET").arg(&redis_key).query(&mut raw).unwrap();
    assert_eq!(value.as_deref(), Some(lease.token.as_str()));
    let pttl: i64 = redis::cmd("PTTL").arg(&redis_key).query(&mut raw).unwrap();
    assert!(pttl > 0 && pttl <= 10_000, "PTTL {pttl}");

    assert_eq!(store.release(&lease).await.unwrap(), Release::Released);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&redis_key)
        .query(&mut raw)
        .unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn unreachable_redis_is_an_error_never_held_elsewhere() {
    // Port 1 on loopback: connection refused.
    let store = RedisLockStore::new(&settings("redis://127.0.0.1:1/0")).unwrap();
    let metered = MeteredLockStore::new(std::sync::Arc::new(store), "redis");
    let k = key("upwork", "down");
    let lease = Lease {
        key: k.clone(),
        token: "t".to_owned(),
        ttl: TTL,
        acquired_at: std::time::Instant::now(),
    };

    let acquired = metered.try_acquire(&k, TTL).await;
    assert!(
        matches!(acquired, Err(LockError::Unavailable(_))),
        "{acquired:?}"
    );
    assert!(metered.extend(&lease, TTL).await.is_err());
    assert!(metered.release(&lease).await.is_err());
    assert!(metered.holder(&k).await.is_err());
    assert!(metered.health().await.is_err());

    let m = metered.metrics();
    assert_eq!(m.redis_errors, 5);
    assert_eq!(m.lock_attempts, 1);
    assert_eq!(
        (m.lock_successes, m.lock_conflicts, m.lock_timeouts),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn connect_fails_when_redis_is_unreachable() {
    let err = RedisLockStore::connect(&settings("redis://127.0.0.1:1/0"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn an_unanswering_redis_times_out_instead_of_hanging() {
    // A listener that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let options = RedisOptions {
        connect_timeout: Duration::from_millis(200),
        response_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let url = format!("redis://127.0.0.1:{port}/0");
    let store = RedisLockStore::with_options(&settings(&url), &options).unwrap();
    let result = store.try_acquire(&key("upwork", "silent"), TTL).await;
    assert!(
        matches!(
            result,
            Err(LockError::Unavailable(_) | LockError::TimedOut { .. })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn passwords_never_appear_in_errors_or_debug() {
    let secret = "sup3r-s3cret-pw";
    let down = RedisLockStore::new(&settings(&format!("redis://:{secret}@127.0.0.1:1/0"))).unwrap();
    assert!(!format!("{down:?}").contains(secret));
    let err = down.health().await.unwrap_err();
    assert!(!chain(&err).contains(secret), "{}", chain(&err));

    let bad = RedisLockStore::new(&settings(&format!(
        "redis://:{secret}@127.0.0.1:6379/notadb"
    )))
    .unwrap_err();
    assert!(matches!(bad, LockError::Config(_)));
    assert!(!chain(&bad).contains(secret), "{}", chain(&bad));

    // A wrong password against the real server: refused, and still not echoed.
    if support::redis_available().await {
        let url = support::redis_url().replacen("redis://", &format!("redis://:{secret}@"), 1);
        let store = RedisLockStore::new(&settings(&url)).unwrap();
        if let Err(e) = store.health().await {
            assert!(!chain(&e).contains(secret), "{}", chain(&e));
        }
    }
}

#[tokio::test]
async fn rediss_url_is_accepted_and_fails_closed_against_a_plain_port() {
    if !support::redis_available().await {
        return;
    }
    // TLS towards the plaintext test Redis: the handshake fails, which must be an error.
    let u = url::Url::parse(&support::redis_url()).unwrap();
    let url = format!(
        "rediss://{}:{}/0",
        u.host_str().unwrap(),
        u.port().unwrap_or(6379)
    );
    let options = RedisOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let store = RedisLockStore::with_options(&settings(&url), &options).unwrap();
    let result = store.try_acquire(&key("upwork", "tls"), TTL).await;
    assert!(
        matches!(
            result,
            Err(LockError::Unavailable(_) | LockError::TimedOut { .. })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn rediss_with_a_password_works_and_verifies_the_server_certificate() {
    let secret = "tls-s3cret-pw";
    let Some((mut server, ca)) = PrivateRedis::reserve_tls(secret) else {
        return;
    };
    server.start().await;
    let url = format!("rediss://:{secret}@127.0.0.1:{}/0", server.port);
    let trusting = RedisOptions {
        tls_ca_pem: Some(ca),
        ..Default::default()
    };

    // TLS + password, the server certificate verified against our CA: leases work.
    let store = RedisLockStore::with_options(&settings(&url), &trusting).unwrap();
    store.health().await.unwrap();
    let k = key("upwork", "tls");
    let lease = store.try_acquire(&k, TTL).await.unwrap().unwrap();
    assert!(store.try_acquire(&k, TTL).await.unwrap().is_none());
    assert_eq!(store.release(&lease).await.unwrap(), Release::Released);

    // Only the public web roots: the private CA is not trusted, so nothing is sent.
    let quick = RedisOptions {
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        tls_ca_pem: None,
    };
    let untrusting = RedisLockStore::with_options(&settings(&url), &quick).unwrap();
    let err = untrusting.health().await.unwrap_err();
    assert!(!chain(&err).contains(secret), "{}", chain(&err));
    // `#insecure` (skip verification) is not available in this build: refused, not downgraded.
    let insecure = RedisLockStore::with_options(&settings(&format!("{url}#insecure")), &quick);
    assert!(insecure.is_err() || insecure.unwrap().health().await.is_err());

    // A wrong password is refused and not echoed.
    let wrong_url = url.replace(secret, "wr0ng-pw");
    let wrong = RedisLockStore::with_options(&settings(&wrong_url), &trusting).unwrap();
    let err = wrong.try_acquire(&k, TTL).await.unwrap_err();
    assert!(!chain(&err).contains("wr0ng-pw"), "{}", chain(&err));
}

#[tokio::test]
async fn store_recovers_when_redis_comes_back_after_a_crash() {
    let Some(mut server) = PrivateRedis::reserve(false) else {
        return;
    };
    let store = RedisLockStore::new(&settings(&server.url())).unwrap();
    let k = key("upwork", "restart");
    // Not started yet: errors, never "held".
    assert!(store.try_acquire(&k, TTL).await.is_err());

    server.start().await;
    eventually(
        Duration::from_secs(10),
        "the store reconnects once Redis is up",
        || async { store.health().await.is_ok() },
    )
    .await;
    let lease = store.try_acquire(&k, TTL).await.unwrap().unwrap();

    // Crash (no persistence): the lease is gone with it; calls fail meanwhile.
    server.kill();
    assert!(store.extend(&lease, TTL).await.is_err());
    server.start().await;
    eventually(
        Duration::from_secs(10),
        "the store reconnects after a restart",
        || async { store.health().await.is_ok() },
    )
    .await;
    assert!(
        !store.extend(&lease, TTL).await.unwrap(),
        "lease lost in the crash"
    );
    assert!(store.try_acquire(&k, TTL).await.unwrap().is_some());
}

#[tokio::test]
async fn works_against_a_redis_cluster() {
    let Some(mut server) = PrivateRedis::reserve(true) else {
        return;
    };
    server.start().await;
    for url in [
        format!("{}?cluster=true", server.url()),
        // A node list (the same node twice stands in for several seeds).
        format!("{0},{0}", server.url()),
    ] {
        let store = RedisLockStore::new(&RedisSettings {
            url: SecretUrl::new(url),
            key_prefix: "p:".to_owned(),
        })
        .unwrap()
        .with_instance("cluster");
        assert!(store.is_cluster());
        store.health().await.unwrap();
        let k = key("upwork", "job_7");
        let lease = store.try_acquire(&k, TTL).await.unwrap().unwrap();
        assert!(store.try_acquire(&k, TTL).await.unwrap().is_none());
        assert!(store.extend(&lease, TTL).await.unwrap());
        assert_eq!(store.holder(&k).await.unwrap().unwrap().token, lease.token);
        assert_eq!(store.release(&lease).await.unwrap(), Release::Released);
        assert_eq!(store.release(&lease).await.unwrap(), Release::NotOwned);
    }

    // The hash tag: the lease key hashes to the slot of `{m:p}` alone.
    let mut raw = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .unwrap();
    let mut slot = |k: &str| -> i64 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query(&mut raw)
            .unwrap()
    };
    let tag_slot = slot("upwork:job_7");
    assert_eq!(slot("p:bid_lock:{upwork:job_7}"), tag_slot);
    assert_eq!(slot("other:prefix:bid_lock:{upwork:job_7}"), tag_slot);
}

#[test]
fn malformed_urls_are_configuration_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    for url in ["http://127.0.0.1:6379", "not a url", ""] {
        let err = RedisLockStore::new(&settings(url)).unwrap_err();
        assert!(matches!(err, LockError::Config(_)), "{url}: {err}");
        assert!(err.source().is_none());
    }
}
