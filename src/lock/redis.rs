//! Redis lease store: `SET key token NX PX ttl`, Lua compare-and-delete release and extend.
//!
//! Key layout: `{redis.key_prefix}bid_lock:{marketplace:posting_id}`. The braces are a Redis
//! Cluster hash tag: only the part inside them is hashed, so every key of one posting lands in
//! the same slot (and each lease operation is a single-key command or script, which a cluster
//! routes to that slot's primary). Connection kinds (single node, TLS, cluster) are described in
//! [`redis_conn`](super::redis_conn).
//!
//! Every Redis failure is a [`LockError::Unavailable`], never `Ok(None)`: "I could not ask" must
//! not read as "someone else holds it". Operations note: run the lock Redis with
//! `maxmemory-policy noeviction`, or Redis may evict a live lease under memory pressure.

use std::time::Duration;

use async_trait::async_trait;
use redis::{Script, Value};

use super::redis_conn::{RedisConn, RedisOptions, redacted};
use super::{
    Admission, HolderInfo, Lease, LeaseBatches, LockError, LockStore, Rate, RateLimiter, Release,
};
use crate::config::{RedisSettings, SecretUrl};
use crate::posting::PostingKey;

/// Deletes the key only if it still holds our token: 1 released, 0 not ours.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Resets the TTL only if the key still holds our token: 1 extended, 0 not ours.
const EXTEND_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Token and PTTL read atomically (a GET then PTTL could straddle an expiry): nil when free.
const HOLDER_LUA: &str = r"
local token = redis.call('GET', KEYS[1])
if not token then return false end
return {token, redis.call('PTTL', KEYS[1])}";

/// Leases in Redis. Cheap to share behind an `Arc`; the connection multiplexes all callers.
pub struct RedisLockStore {
    conn: RedisConn,
    key_prefix: String,
    instance: String,
    shown_url: String,
    /// Upper bound on one call, reconnect attempts included.
    deadline: Duration,
    release: Script,
    extend: Script,
    holder: Script,
    admit: Script,
}

impl std::fmt::Debug for RedisLockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLockStore")
            .field("url", &self.shown_url)
            .field("cluster", &self.conn.is_cluster())
            .field("key_prefix", &self.key_prefix)
            .field("instance", &self.instance)
            .finish()
    }
}

fn ttl_millis(ttl: Duration) -> Result<u64, LockError> {
    if ttl.is_zero() {
        return Err(LockError::Config("a lease TTL must be positive".to_owned()));
    }
    // Round up: a TTL is a promise to hold at least that long, and Redis rejects PX 0.
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

impl RedisLockStore {
    /// Builds the store without touching the network (connects on first use, reconnects by
    /// itself). Fails only on a malformed `redis.url`. Call it inside a Tokio runtime. The instance id defaults to `bidorch`;
    /// set it with [`with_instance`](Self::with_instance).
    pub fn new(settings: &RedisSettings) -> Result<Self, LockError> {
        Self::with_options(settings, &RedisOptions::default())
    }

    /// [`new`](Self::new) with explicit timeouts and TLS trust.
    pub fn with_options(
        settings: &RedisSettings,
        options: &RedisOptions,
    ) -> Result<Self, LockError> {
        let url: &SecretUrl = &settings.url;
        if settings.key_prefix.contains(['{', '}']) {
            // Redis Cluster hashes the first `{...}` of a key: it must be the posting's tag.
            return Err(LockError::Config(
                "redis.key_prefix must not contain `{` or `}`: the lease key's hash tag must be \
                 its {marketplace:posting_id} part"
                    .to_owned(),
            ));
        }
        Ok(Self {
            conn: RedisConn::open(url, options)?,
            key_prefix: settings.key_prefix.clone(),
            instance: "bidorch".to_owned(),
            shown_url: redacted(url),
            deadline: options.connect_timeout + options.response_timeout,
            release: Script::new(RELEASE_LUA),
            extend: Script::new(EXTEND_LUA),
            holder: Script::new(HOLDER_LUA),
            admit: Script::new(super::rate::ADMIT_LUA),
        })
    }

    /// Builds the store and checks Redis answers (`PING`), so start-up fails early and clearly.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, LockError> {
        let store = Self::new(settings)?;
        store.health().await?;
        Ok(store)
    }

    /// Sets the instance id written into this store's holder tokens (shown by `holder()`).
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// The Redis key of a posting's lease: `{key_prefix}bid_lock:{m:p}`, the last part being
    /// [`PostingKey::hash_tag`] (written in place: this runs on every lease operation).
    pub fn key(&self, key: &PostingKey) -> String {
        let (m, p) = (key.marketplace(), key.posting_id());
        let mut out = String::with_capacity(self.key_prefix.len() + 12 + m.len() + p.len());
        out.push_str(&self.key_prefix);
        out.push_str("bid_lock:{");
        out.push_str(m);
        out.push(':');
        out.push_str(p);
        out.push('}');
        out
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }
}

#[async_trait]
impl LockStore for RedisLockStore {
    async fn try_acquire(
        &self,
        key: &PostingKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        let ms = ttl_millis(ttl)?;
        let token = super::new_token(&self.instance);
        // Taken before the command is sent: our idea of the expiry is never later than Redis's.
        // The real clock, as Redis's TTL runs in real time even when a test pauses Tokio's.
        let acquired_at = std::time::Instant::now();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ms);
        let reply: Value = self.conn.query("SET NX", &cmd, self.deadline).await?;
        Ok(match reply {
            Value::Nil => None,
            _ => Some(Lease {
                key: key.clone(),
                token,
                ttl,
                acquired_at,
            }),
        })
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        let ms = ttl_millis(ttl)?;
        let mut call = self.extend.key(self.key(&lease.key));
        call.arg(&lease.token).arg(ms);
        let extended: i64 = self.conn.invoke("extend", &call, self.deadline).await?;
        Ok(extended == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<Release, LockError> {
        let mut call = self.release.key(self.key(&lease.key));
        call.arg(&lease.token);
        let deleted: i64 = self.conn.invoke("release", &call, self.deadline).await?;
        Ok(if deleted == 1 {
            Release::Released
        } else {
            Release::NotOwned
        })
    }

    async fn holder(&self, key: &PostingKey) -> Result<Option<HolderInfo>, LockError> {
        let call = self.holder.key(self.key(key));
        let found: Option<(String, i64)> = self.conn.invoke("holder", &call, self.deadline).await?;
        Ok(found.map(|(token, pttl)| HolderInfo {
            token,
            // -1: a key without expiry, which bidorch never writes; report it as unbounded.
            ttl_left: u64::try_from(pttl).map_or(Duration::MAX, Duration::from_millis),
        }))
    }

    async fn health(&self) -> Result<(), LockError> {
        let pong: String = self
            .conn
            .query("PING", &redis::cmd("PING"), self.deadline)
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(LockError::Unavailable(
                format!("redis PING answered {pong:?}").into(),
            ))
        }
    }
}

#[async_trait]
impl LeaseBatches for RedisLockStore {
    /// One pipeline of `SET NX PX` on a single node (one round trip for the lot); a cluster's
    /// keys live on several nodes, so there each key is its own command.
    async fn try_acquire_many(
        &self,
        keys: &[PostingKey],
        ttl: Duration,
    ) -> Result<Vec<Option<Lease>>, LockError> {
        if self.conn.is_cluster() {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                out.push(self.try_acquire(key, ttl).await?);
            }
            return Ok(out);
        }
        let ms = ttl_millis(ttl)?;
        let tokens: Vec<String> = keys
            .iter()
            .map(|_| super::new_token(&self.instance))
            .collect();
        let mut pipe = redis::Pipeline::with_capacity(keys.len());
        for (key, token) in keys.iter().zip(&tokens) {
            let key = self.key(key);
            // Sized up front: growing each command from nothing was most of what building the
            // batch cost.
            let mut set = redis::Cmd::with_capacity(6, 3 + key.len() + token.len() + 4 + 20);
            set.arg("SET")
                .arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ms);
            pipe.add_command(set);
        }
        // Before the pipeline is sent, as for a single SET: our idea of each expiry is never
        // later than Redis's.
        let acquired_at = std::time::Instant::now();
        let replies = self.conn.pipeline("SET NX", &pipe, self.deadline).await?;
        if replies.len() != keys.len() {
            return Err(LockError::Unavailable(
                format!("redis answered {} of {} SETs", replies.len(), keys.len()).into(),
            ));
        }
        replies
            .into_iter()
            .zip(keys.iter().zip(tokens))
            .map(|(reply, (key, token))| match reply {
                Value::Nil => Ok(None),
                Value::Okay | Value::SimpleString(_) => Ok(Some(Lease {
                    key: key.clone(),
                    token,
                    ttl,
                    acquired_at,
                })),
                other => Err(LockError::Unavailable(
                    format!("redis answered SET NX with {other:?}").into(),
                )),
            })
            .collect()
    }

    /// One pipeline of compare-and-delete scripts on a single node; on a cluster, one call per
    /// lease.
    async fn release_many(&self, leases: &[Lease]) -> Result<Vec<Release>, LockError> {
        if self.conn.is_cluster() {
            let mut out = Vec::with_capacity(leases.len());
            for lease in leases {
                out.push(self.release(lease).await?);
            }
            return Ok(out);
        }
        let mut pipe = redis::Pipeline::with_capacity(leases.len());
        for lease in leases {
            let key = self.key(&lease.key);
            // EVAL, not EVALSHA: a pipeline cannot load a script a restarted Redis forgot.
            let mut eval = redis::Cmd::with_capacity(
                5,
                4 + RELEASE_LUA.len() + 1 + key.len() + lease.token.len(),
            );
            eval.arg("EVAL")
                .arg(RELEASE_LUA)
                .arg(1)
                .arg(key)
                .arg(&lease.token);
            pipe.add_command(eval);
        }
        let replies = self.conn.pipeline("release", &pipe, self.deadline).await?;
        if replies.len() != leases.len() {
            return Err(LockError::Unavailable(
                format!(
                    "redis answered {} of {} releases",
                    replies.len(),
                    leases.len()
                )
                .into(),
            ));
        }
        replies
            .into_iter()
            .map(|reply| match reply {
                Value::Int(1) => Ok(Release::Released),
                Value::Int(0) => Ok(Release::NotOwned),
                other => Err(LockError::Unavailable(
                    format!("redis answered a release with {other:?}").into(),
                )),
            })
            .collect()
    }
}

#[async_trait]
impl RateLimiter for RedisLockStore {
    async fn admit(&self, marketplace: &str, rate: &Rate) -> Result<Admission, LockError> {
        // Its own hash tag: a marketplace's bucket lives in one slot of a cluster.
        let key = format!("{}rate:{{{marketplace}}}", self.key_prefix);
        let mut call = self.admit.key(key);
        call.arg(rate.interval_ms()).arg(rate.tolerance_ms());
        let wait: u64 = self.conn.invoke("admit", &call, self.deadline).await?;
        Ok(if wait == 0 {
            Admission::Go
        } else {
            Admission::Wait(Duration::from_millis(wait))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_and_rejects_zero() {
        assert_eq!(ttl_millis(Duration::from_micros(1)).unwrap(), 1);
        assert_eq!(ttl_millis(Duration::from_millis(1500)).unwrap(), 1500);
        assert!(ttl_millis(Duration::ZERO).is_err());
    }

    #[tokio::test]
    async fn keys_carry_the_posting_hash_tag() {
        let settings = RedisSettings {
            url: SecretUrl::new("redis://:pw@127.0.0.1:6379/0"),
            key_prefix: "t:".to_owned(),
        };
        let store = RedisLockStore::new(&settings).unwrap();
        let key = PostingKey::new("upwork", "job_1").unwrap();
        assert_eq!(store.key(&key), "t:bid_lock:{upwork:job_1}");
        assert_eq!(store.key(&key), format!("t:bid_lock:{}", key.hash_tag()));
        assert!(!format!("{store:?}").contains("pw@"));
    }

    #[tokio::test]
    async fn a_prefix_with_braces_is_refused() {
        let settings = RedisSettings {
            url: SecretUrl::new("redis://127.0.0.1:6379/0"),
            key_prefix: "{app}:".to_owned(),
        };
        let err = RedisLockStore::new(&settings).unwrap_err();
        assert!(matches!(err, LockError::Config(_)), "{err}");
    }
}
