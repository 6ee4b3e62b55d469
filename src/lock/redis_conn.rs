//! The Redis connection behind [`RedisLockStore`](super::RedisLockStore): one node or a cluster,
//! bounded timeouts, and errors that never carry the URL's password.
//!
//! `redis.url` is one `redis://` / `rediss://` URL (a single node, or a managed endpoint), or a
//! Redis Cluster given as a comma-separated list of node URLs (`redis://a:7000,redis://b:7001`),
//! or one node URL with `?cluster=true` (the client discovers the other nodes from it). Every lease
//! command names exactly one key, `{prefix}bid_lock:{m:p}`, so in a cluster it is routed to the
//! slot of its `{m:p}` hash tag and the Lua scripts run on the node owning that key.
//!
//! `rediss://` is TLS (rustls): the server certificate is always verified, against the public
//! web roots or, for a private CA, only against [`RedisOptions::tls_ca_pem`]; `#insecure` is
//! refused. A password in the URL (`redis://:pw@host` or ACL `redis://user:pw@host`) is sent
//! with AUTH and never shown: errors and `Debug` print the URL redacted.
//!
//! Both kinds connect lazily and reconnect by themselves: a store can be built while Redis is
//! down, answers every call with an error until Redis is back, and never blocks past
//! `connect_timeout + response_timeout` per call.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, ScriptInvocation, TlsCertificates};
use tokio::sync::OnceCell;

use super::LockError;
use crate::config::SecretUrl;

/// A failed Redis call, naming the operation (shown without any password: the client's errors
/// never hold the URL).
#[derive(Debug, thiserror::Error)]
#[error("redis {op} failed")]
pub(super) struct RedisOpError {
    op: &'static str,
    #[source]
    cause: RedisError,
}

fn unavailable(op: &'static str, cause: RedisError) -> LockError {
    LockError::Unavailable(Box::new(RedisOpError { op, cause }))
}

/// How to connect to Redis, beyond the URL.
#[derive(Clone)]
pub struct RedisOptions {
    /// Bound on establishing a TCP (and TLS) connection to a node.
    pub connect_timeout: Duration,
    /// Bound on waiting for one command's answer.
    pub response_timeout: Duration,
    /// For `rediss://` to a server with a private CA: trust only this CA (PEM) instead of the
    /// public web roots. Certificates are always verified (`#insecure` is not supported).
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            tls_ca_pem: None,
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A lazily connected single-node manager or cluster connection. Cloning is shallow.
#[derive(Clone)]
pub(super) enum RedisConn {
    Single(ConnectionManager),
    Cluster(Arc<Cluster>),
}

/// A cluster client and its connection, established on first use.
pub(super) struct Cluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl Cluster {
    async fn conn(&self) -> Result<ClusterConnection, RedisError> {
        // A failed first connect leaves the cell empty, so the next call tries again.
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

/// `redis.url` safe to show: each node's password replaced by `***`.
pub(super) fn redacted(url: &SecretUrl) -> String {
    url.expose()
        .split(',')
        .map(|node| SecretUrl::new(node.trim()).redacted())
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits `redis.url` into node URLs and whether they form a cluster (see the module docs).
pub(super) fn parse_nodes(url: &SecretUrl) -> Result<(Vec<String>, bool), LockError> {
    let mut cluster = false;
    let mut nodes = Vec::new();
    for part in url
        .expose()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let shown = SecretUrl::new(part).redacted();
        let mut parsed = url::Url::parse(part)
            .map_err(|e| LockError::Config(format!("redis.url {shown}: {e}")))?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            return Err(LockError::Config(format!(
                "redis.url {shown}: scheme must be redis:// or rediss://"
            )));
        }
        let (flag, rest): (Vec<_>, Vec<_>) = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .partition(|(k, _)| k == "cluster");
        if flag
            .iter()
            .any(|(_, v)| matches!(v.as_str(), "true" | "1" | "yes"))
        {
            cluster = true;
        }
        if !flag.is_empty() {
            // The redis crate does not know `cluster`; hand it the URL without it.
            parsed.set_query(None);
            if !rest.is_empty() {
                parsed.query_pairs_mut().extend_pairs(rest);
            }
        }
        nodes.push(parsed.to_string());
    }
    if nodes.is_empty() {
        return Err(LockError::Config("redis.url is empty".to_owned()));
    }
    Ok((nodes.clone(), cluster || nodes.len() > 1))
}

impl RedisConn {
    /// Builds the connection without touching the network.
    pub(super) fn open(url: &SecretUrl, options: &RedisOptions) -> Result<Self, LockError> {
        // The client's parse errors describe the problem and never echo the URL or password.
        let config_error =
            |e: RedisError| LockError::Config(format!("redis.url {}: {e}", redacted(url)));
        let (nodes, cluster) = parse_nodes(url)?;
        let certificates = options.tls_ca_pem.as_ref().map(|ca| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        });
        if cluster {
            let mut builder = ClusterClient::builder(nodes)
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout)
                .retries(2);
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            let client = builder.build().map_err(config_error)?;
            return Ok(Self::Cluster(Arc::new(Cluster {
                client,
                conn: OnceCell::new(),
            })));
        }
        let client = match certificates {
            Some(certificates) => redis::Client::build_with_tls(nodes[0].as_str(), certificates),
            None => redis::Client::open(nodes[0].as_str()),
        }
        .map_err(config_error)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            // Few, short reconnect retries: a caller waiting on a dead Redis must get its error
            // quickly; the next call starts a fresh reconnect anyway.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(250));
        let manager =
            ConnectionManager::new_lazy_with_config(client, config).map_err(config_error)?;
        Ok(Self::Single(manager))
    }

    /// Whether this is a Redis Cluster connection.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs a command, bounded by `deadline`.
    pub(super) async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &Cmd,
        deadline: Duration,
    ) -> Result<T, LockError> {
        let call = async {
            match self {
                Self::Single(m) => cmd.query_async(&mut m.clone()).await,
                Self::Cluster(c) => cmd.query_async(&mut c.conn().await?).await,
            }
        };
        Self::bounded(op, deadline, call).await
    }

    /// Runs a pipeline (single node only: a cluster's keys live on several nodes), bounded by
    /// `deadline`; one answer per command.
    pub(super) async fn pipeline(
        &self,
        op: &'static str,
        pipe: &redis::Pipeline,
        deadline: Duration,
    ) -> Result<Vec<redis::Value>, LockError> {
        let call = async {
            match self {
                Self::Single(m) => pipe.query_async(&mut m.clone()).await,
                Self::Cluster(_) => Err(RedisError::from((
                    redis::ErrorKind::Client,
                    "pipelines of lease commands are for a single Redis node",
                ))),
            }
        };
        Self::bounded(op, deadline, call).await
    }

    /// Runs a Lua script (EVALSHA, loading it on NOSCRIPT), bounded by `deadline`.
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &ScriptInvocation<'_>,
        deadline: Duration,
    ) -> Result<T, LockError> {
        let call = async {
            match self {
                Self::Single(m) => script.invoke_async(&mut m.clone()).await,
                Self::Cluster(c) => script.invoke_async(&mut c.conn().await?).await,
            }
        };
        Self::bounded(op, deadline, call).await
    }

    async fn bounded<T>(
        op: &'static str,
        deadline: Duration,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, LockError> {
        // The connection's own timeouts bound each step; this bounds reconnect retries too. A
        // command cut off here may still have run in Redis: for SET that leaves a lease nobody
        // knows the token of, which expires by its TTL (fail closed, never a second holder).
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(LockError::TimedOut {
                op,
                after: deadline,
            }),
            Ok(Err(e)) => Err(unavailable(op, e)),
            Err(_) => Err(LockError::TimedOut {
                op,
                after: deadline,
            }),
        }
    }
}
