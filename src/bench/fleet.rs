//! One bench run's world: names of its own on the configured RabbitMQ, Redis and PostgreSQL, its
//! topology and ledger made before anything is published, `bidorch worker` processes started as
//! a deployment starts them (the default configuration, logs in files), and everything removed
//! afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::{Channel, Connection, ConnectionProperties};
use sqlx::{Connection as _, PgConnection};

use super::BenchError;
use crate::config::Settings;
use crate::demo::{BLOCKED, MARKETPLACES, MIN_BUDGET};

/// The variable the workers read their marketplace token from (the sandbox takes any).
const TOKEN_ENV: &str = "BIDORCH_BENCH_TOKEN";

/// A run's names and what was made under them.
pub(super) struct Space {
    pub settings: Settings,
}

fn db(e: sqlx::Error) -> BenchError {
    BenchError::Ledger(e.to_string())
}

fn broker(e: lapin::Error) -> BenchError {
    BenchError::Broker(e.to_string())
}

async fn depth(channel: &Channel, queue: &str) -> Result<u32, BenchError> {
    crate::amqp::topology::message_count(channel, queue)
        .await
        .map_err(|e| BenchError::Broker(crate::error::chain(&e)))
}

impl Space {
    /// Names unique to this run over `base`'s servers: exchange, queues, key prefix, schema.
    pub fn new(base: &Settings, label: &str) -> Self {
        let id = format!("{label}{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut s = base.clone();
        s.amqp.exchange = format!("bidorch.bench.{id}");
        s.amqp.queue = format!("bidorch.bench.{id}.postings");
        s.redis.key_prefix = format!("bidorch-bench:{id}:");
        s.database.schema = format!("bidorch_bench_{id}");
        Self { settings: s }
    }

    /// Declares the topology and migrates the schema, so the run's postings can be published
    /// before any worker starts.
    pub async fn prepare(&self) -> Result<(), BenchError> {
        let conn = Connection::connect(
            self.settings.amqp.url.expose(),
            ConnectionProperties::default(),
        )
        .await
        .map_err(broker)?;
        let channel = conn.create_channel().await.map_err(broker)?;
        crate::amqp::topology::declare(&channel, &self.settings.amqp)
            .await
            .map_err(|e| BenchError::Broker(crate::error::chain(&e)))?;
        let _ = conn.close(200, "bench prepared".into()).await;
        crate::ledger::PgBidLedger::connect_and_migrate(&self.settings.database)
            .await
            .map_err(|e| BenchError::Ledger(crate::error::chain(&e)))?
            .close()
            .await;
        Ok(())
    }

    /// Removes everything the run made (best effort).
    pub async fn remove(&self) {
        crate::demo::remove_run(&self.settings).await;
    }

    /// The environment of this run's workers: the servers and the `amqp.prefetch` the bench is
    /// configured with, the run's names, the sandbox at `sandbox_url` for every marketplace, the
    /// demo's bidding rules (so the bench knows which postings are eligible) and a daily cap, if
    /// any. Nothing else: each worker otherwise runs bidorch's default configuration.
    pub fn worker_env(&self, sandbox_url: &str, daily_cap: Option<u64>) -> Vec<(String, String)> {
        let s = &self.settings;
        let mut env: Vec<(String, String)> = vec![
            ("AMQP_URL".into(), s.amqp.url.expose().to_owned()),
            ("REDIS_URL".into(), s.redis.url.expose().to_owned()),
            ("DATABASE_URL".into(), s.database.url.expose().to_owned()),
            ("BIDORCH__AMQP__EXCHANGE".into(), s.amqp.exchange.clone()),
            ("BIDORCH__AMQP__QUEUE".into(), s.amqp.queue.clone()),
            (
                "BIDORCH__AMQP__PREFETCH".into(),
                s.amqp.prefetch.to_string(),
            ),
            (
                "BIDORCH__REDIS__KEY_PREFIX".into(),
                s.redis.key_prefix.clone(),
            ),
            (
                "BIDORCH__DATABASE__SCHEMA".into(),
                s.database.schema.clone(),
            ),
            (
                "BIDORCH__BIDDING__MIN_BUDGET".into(),
                MIN_BUDGET.to_string(),
            ),
            (
                "BIDORCH__BIDDING__BLOCKED_KEYWORDS".into(),
                BLOCKED.join(","),
            ),
            (
                "BIDORCH__BIDDING__DAILY_BID_CAP".into(),
                daily_cap.unwrap_or(0).to_string(),
            ),
            (TOKEN_ENV.into(), "bench".into()),
        ];
        for m in MARKETPLACES {
            let upper = m.to_ascii_uppercase();
            env.push((
                format!("BIDORCH__MARKETPLACES__{upper}__BASE_URL"),
                format!("{sandbox_url}/{m}"),
            ));
            env.push((
                format!("BIDORCH__MARKETPLACES__{upper}__TOKEN_ENV"),
                TOKEN_ENV.into(),
            ));
        }
        env
    }

    /// Messages waiting in the run's work and wait queues.
    pub async fn waiting(&self, channel: &Channel) -> Result<u32, BenchError> {
        let s = &self.settings.amqp;
        let mut waiting = 0;
        for q in
            std::iter::once(s.queue.clone()).chain(s.retry_tiers.iter().map(|t| s.retry_queue(*t)))
        {
            waiting += depth(channel, &q).await?;
        }
        Ok(waiting)
    }

    /// Messages parked in the run's dead-letter queue.
    pub async fn parked(&self, channel: &Channel) -> Result<u32, BenchError> {
        depth(channel, &self.settings.amqp.dead_letter_queue()).await
    }

    /// A connection to the run's ledger, for the bench's own reads.
    pub async fn ledger(&self) -> Result<PgConnection, BenchError> {
        PgConnection::connect(self.settings.database.url.expose())
            .await
            .map_err(db)
    }

    /// Final rows so far, and the finish times of the 10th and 90th percentile of them.
    pub async fn finished(
        &self,
        ledger: &mut PgConnection,
    ) -> Result<(i64, Option<(f64, f64)>), BenchError> {
        let sql = format!(
            "SELECT count(*), \
                    extract(epoch FROM percentile_disc(0.1) WITHIN GROUP (ORDER BY updated_at))::float8, \
                    extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY updated_at))::float8 \
             FROM \"{}\".bid_ledger WHERE state <> 'pending'",
            self.settings.database.schema
        );
        let (n, p10, p90): (i64, Option<f64>, Option<f64>) =
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(ledger)
                .await
                .map_err(db)?;
        Ok((n, p10.zip(p90)))
    }
}

/// `bidorch worker` child processes.
pub(super) struct Workers {
    children: Vec<(Child, String)>,
}

/// A free loopback address for a worker's `http.addr`.
fn free_addr() -> Result<String, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(BenchError::Spawn)?;
    Ok(listener
        .local_addr()
        .map_err(BenchError::Spawn)?
        .to_string())
}

impl Workers {
    /// Starts `n` workers of `exe` with exactly `env` (plus `PATH`, an `http.addr` and an
    /// instance id each), logging to `{log_dir}/{label}-w{i}.log`.
    pub fn spawn(
        exe: &Path,
        env: &[(String, String)],
        n: usize,
        log_dir: &Path,
        label: &str,
    ) -> Result<Self, BenchError> {
        std::fs::create_dir_all(log_dir).map_err(BenchError::Spawn)?;
        let mut children = Vec::with_capacity(n);
        for i in 1..=n {
            let addr = free_addr()?;
            let log: PathBuf = log_dir.join(format!("{label}-w{i}.log"));
            let out = std::fs::File::create(&log).map_err(BenchError::Spawn)?;
            let err = out.try_clone().map_err(BenchError::Spawn)?;
            let mut command = Command::new(exe);
            command
                .arg("worker")
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default());
            // The one setting passed through: a log filter, to look into a run (it costs speed).
            if let Some(filter) = std::env::var_os("RUST_LOG") {
                command.env("RUST_LOG", filter);
            }
            let child = command
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("BIDORCH__HTTP__ADDR", &addr)
                .env(
                    "BIDORCH__WORKER__INSTANCE_ID",
                    format!("bench-{label}-w{i}"),
                )
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(BenchError::Spawn)?;
            children.push((child, addr));
        }
        Ok(Self { children })
    }

    /// The process ids (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(c, _)| c.id()).collect()
    }

    /// Waits until every worker's `/readyz` answers 200, or fails naming the first that did
    /// not within `limit` (or exited).
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), BenchError> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + limit;
        for (i, (child, addr)) in self.children.iter_mut().enumerate() {
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(BenchError::Worker(format!(
                        "worker {} exited at start ({status}); see its log",
                        i + 1
                    )));
                }
                let ready = client
                    .get(format!("http://{addr}/readyz"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(BenchError::Worker(format!(
                        "worker {} was not ready within {limit:?}; see its log",
                        i + 1
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// SIGTERM to every worker, then waits (bounded) for them to exit; a worker still running
    /// after that is killed.
    pub async fn stop(mut self) {
        for (child, _) in &self.children {
            terminate(child.id());
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for (child, _) in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl Drop for Workers {
    /// Never leaves a worker behind, also when the bench fails halfway.
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// SIGTERM, as an orchestrator stops a worker (`kill(1)`: the standard library sends only
/// SIGKILL).
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
