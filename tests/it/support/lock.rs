//! Shared fixtures of the lock tests: per-test Redis key prefixes cleaned up on drop (even after
//! a panic), store builders for both backends, and a private `redis-server` for the cluster and
//! restart tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bidorch::config::{RedisSettings, SecretUrl};
use bidorch::lock::{
    BatchingLocks, Lease, LockStore, MemoryLockStore, MeteredLockStore, RedisLockStore,
};
use bidorch::posting::PostingKey;

use crate::support;

pub use crate::support::{eventually, free_port, key};

/// Redis settings for the shared test Redis with this test's own key prefix.
pub fn redis_settings(prefix: &str) -> RedisSettings {
    RedisSettings {
        url: SecretUrl::new(support::redis_url()),
        key_prefix: prefix.to_owned(),
    }
}

/// A unique key prefix on the shared Redis; deletes its keys when dropped.
pub struct RedisPrefix {
    pub prefix: String,
}

impl RedisPrefix {
    /// `None` (test skipped) when Redis is unreachable and services are not required.
    pub async fn new() -> Option<Self> {
        if !support::redis_available().await {
            return None;
        }
        Some(Self {
            prefix: format!("{}:", support::unique("bidorch_lock_test")),
        })
    }

    /// A Redis store (its own connection) under this prefix, for instance `instance`.
    pub fn store(&self, instance: &str) -> Arc<RedisLockStore> {
        let store = RedisLockStore::new(&redis_settings(&self.prefix)).expect("test URL parses");
        Arc::new(store.with_instance(instance))
    }

    /// The same, metered.
    pub fn metered(&self, instance: &str) -> Arc<MeteredLockStore> {
        Arc::new(MeteredLockStore::new(self.store(instance), "redis"))
    }

    /// The full Redis key of a posting's lease under this prefix.
    pub fn redis_key(&self, key: &PostingKey) -> String {
        format!("{}bid_lock:{}", self.prefix, key.hash_tag())
    }

    /// A plain synchronous connection for checking what is really in Redis.
    pub fn raw(&self) -> redis::Connection {
        redis::Client::open(support::redis_url())
            .and_then(|c| c.get_connection())
            .expect("raw Redis connection")
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        // Synchronous on purpose: runs on panic too, without needing the test's runtime.
        let Ok(mut conn) =
            redis::Client::open(support::redis_url()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let pattern = format!("{}*", self.prefix);
        let keys: Vec<String> = match redis::Commands::scan_match(&mut conn, pattern) {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::Commands::del(&mut conn, keys);
        }
    }
}

/// Where a test's "instances" get their stores from: separate Redis clients under one prefix
/// (each as a worker has it: its calls batched into pipelines, or plain), or handles on one
/// shared in-process store (the only way memory instances can contend).
pub enum Backend {
    Redis(RedisPrefix),
    RedisBatched(RedisPrefix),
    Memory(Arc<MemoryLockStore>),
}

impl Backend {
    pub fn memory() -> Self {
        Self::Memory(Arc::new(MemoryLockStore::new()))
    }

    pub async fn redis() -> Option<Self> {
        RedisPrefix::new().await.map(Self::Redis)
    }

    pub async fn redis_batched() -> Option<Self> {
        RedisPrefix::new().await.map(Self::RedisBatched)
    }

    /// A store for one instance.
    pub fn instance(&self, name: &str) -> Arc<dyn LockStore> {
        match self {
            Self::Redis(p) => p.store(name),
            Self::RedisBatched(p) => Arc::new(BatchingLocks::new(p.store(name))),
            Self::Memory(m) => m.clone(),
        }
    }

    /// The backend's metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Redis(_) | Self::RedisBatched(_) => "redis",
            Self::Memory(_) => "memory",
        }
    }

    /// A metered store for one instance, with its own counters.
    pub fn metered(&self, name: &str) -> Arc<MeteredLockStore> {
        Arc::new(MeteredLockStore::new(self.instance(name), self.label()))
    }
}

/// Polls `condition` every 10 ms until it holds or `within` passes; returns whether it held.
/// What a contender does in the tests (the worker itself never waits: it retries the message
/// later): polls `try_acquire` with a short, jittered backoff until it wins or `within` passes.
/// `None` when it never won.
pub async fn acquire_waiting(
    store: &dyn LockStore,
    key: &PostingKey,
    ttl: Duration,
    within: Duration,
) -> Option<Lease> {
    let deadline = std::time::Instant::now() + within;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(lease) = store
            .try_acquire(key, ttl)
            .await
            .expect("the store answers")
        {
            return Some(lease);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(pause + Duration::from_micros(fastrand::u64(..1000))).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Whether anyone holds `key` right now.
pub async fn is_held(store: &dyn LockStore, key: &PostingKey) -> bool {
    store
        .holder(key)
        .await
        .expect("the store answers")
        .is_some()
}

/// A `redis-server` of our own on a free port (standalone, one-node cluster, or TLS with a
/// password), killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    cluster: bool,
    /// A one-node cluster takes every slot itself; a node of a bigger cluster waits for
    /// `redis-cli --cluster create`.
    assign_slots: bool,
    /// Extra server arguments (TLS, password).
    args: Vec<String>,
    tls: bool,
}

/// Runs `openssl` with `args` in `dir`; false if it is missing or fails.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl PrivateRedis {
    /// Reserves a port and a directory without starting the server. `None` (skipped) when
    /// `redis-server` is not installed and services are not required.
    pub fn reserve(cluster: bool) -> Option<Self> {
        let found = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            support::skip("redis-server is not installed (needed for a private Redis)");
            return None;
        }
        let dir = std::env::temp_dir().join(support::unique("bidorch_redis"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Some(Self {
            port: free_port(),
            child: None,
            dir,
            cluster,
            assign_slots: cluster,
            args: Vec::new(),
            tls: false,
        })
    }

    /// A cluster-enabled server with no slots: one node of a cluster that the caller creates
    /// with `redis-cli --cluster create`.
    pub fn reserve_cluster_node() -> Option<Self> {
        let mut node = Self::reserve(true)?;
        node.assign_slots = false;
        Some(node)
    }

    /// A TLS-only server (certificate for 127.0.0.1 from a fresh private CA) that requires
    /// `password`. Returns the server and the CA certificate (PEM). `None` (skipped) when
    /// `openssl` or a TLS-capable `redis-server` is missing and services are not required.
    pub fn reserve_tls(password: &str) -> Option<(Self, Vec<u8>)> {
        let mut server = Self::reserve(false)?;
        let dir = server.dir.clone();
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext.cnf");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let made = openssl(
            &dir,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=bidorch test CA",
                ],
            ]
            .concat(),
        ) && openssl(
            &dir,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        ) && openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
            ],
        );
        if !made {
            support::skip("openssl is missing or failed (needed for TLS test certificates)");
            return None;
        }
        let port = server.port.to_string();
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        server.args = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port,
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            password.into(),
        ];
        server.tls = true;
        let ca = std::fs::read(dir.join("ca.pem")).expect("read ca.pem");
        Some((server, ca))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (or restarts) the server and waits until it answers (and, for a cluster, until
    /// all slots are served).
    pub async fn start(&mut self) {
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        // Later arguments win, so a TLS server's `--port 0` overrides the plain port.
        cmd.args(&self.args);
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        if self.tls {
            // Our plain client cannot PING through TLS: wait for the port to accept instead.
            let addr = format!("127.0.0.1:{}", self.port);
            eventually(
                Duration::from_secs(10),
                "the private TLS redis-server up",
                || {
                    let addr = addr.clone();
                    async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
                },
            )
            .await;
            return;
        }
        let url = self.url();
        eventually(
            Duration::from_secs(10),
            "the private redis-server up",
            || {
                let url = url.clone();
                async move {
                    redis::Client::open(url)
                        .and_then(|c| c.get_connection())
                        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                        .is_ok()
                }
            },
        )
        .await;
        if self.cluster && self.assign_slots {
            let mut c = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .expect("connect");
            let _: redis::RedisResult<()> = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(0)
                .arg(16383)
                .query(&mut c);
            eventually(Duration::from_secs(10), "the private cluster ok", || {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                async move { info.contains("cluster_state:ok") }
            })
            .await;
        }
    }

    /// Kills the server (like a crash) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
