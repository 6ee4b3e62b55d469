//! The operations endpoint, black-box on port 0: `/metrics` after a small embedded run exposes the
//! documented names with exact counts, and `/readyz` follows Redis and the consumer.
//!
//! The Prometheus recorder is global to a process, so this binary holds the only tests that
//! record metrics; counters are compared as deltas around the run, and the run uses its own
//! marketplace label. The readiness tests record none of the metrics checked here.

mod support;
mod telemetry_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bidorch::config::{RedisSettings, SecretUrl};
use bidorch::http::{Readiness, ReadyReport};
use bidorch::ledger::{BidLedger, SqliteBidLedger};
use bidorch::lock::{
    HeldLease, LockStore, MemoryLockStore, MeteredLockStore, RedisLockStore, RedisOptions,
};
use bidorch::marketplace::sandbox::Fault;
use bidorch::metrics::{CATALOGUE, IN_FLIGHT, LEASES_HELD};
use bidorch::posting::PostingKey;
use telemetry_support::{Embedded, headers, posting};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The operations endpoint on 127.0.0.1:0; stops when dropped.
struct Ops {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Ops {
    async fn serve(readiness: Readiness) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(bidorch::http::serve(listener, readiness, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn metrics(&self) -> Samples {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        Samples::parse(&text)
    }

    async fn ready(&self) -> (u16, ReadyReport) {
        let (status, body) = self.get("/readyz").await;
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        let field = |k: &str| report[k].as_str().unwrap_or_default().to_owned();
        (
            status,
            ReadyReport {
                ready: report["ready"].as_bool().unwrap(),
                lock_store: field("lock_store"),
                ledger: field("ledger"),
                consumer: field("consumer"),
            },
        )
    }

    /// Polls `/readyz` until it answers `status`, within a bounded deadline.
    async fn wait_ready_status(&self, status: u16) -> ReadyReport {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (got, report) = self.ready().await;
            if got == status {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {got} ({report:?}), expected {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Samples of a Prometheus text exposition, plus the names declared by `# TYPE`.
struct Samples {
    values: Vec<(String, BTreeMap<String, String>, f64)>,
    types: BTreeMap<String, String>,
}

impl Samples {
    fn parse(text: &str) -> Self {
        let mut values = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                types.insert(
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap().to_owned(),
                );
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap();
                    let labels = body
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").unwrap();
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            values.push((name, labels, value.parse().unwrap()));
        }
        Self { values, types }
    }

    /// The value of the series `name` with exactly `labels`; 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.values
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map_or(0.0, |(_, _, v)| *v)
    }
}

/// `after - before` for one series.
fn delta(before: &Samples, after: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

async fn sqlite() -> Arc<dyn BidLedger> {
    Arc::new(
        SqliteBidLedger::connect_and_migrate("sqlite::memory:")
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn metrics_expose_the_documented_names_with_exact_counts_after_a_small_run() {
    bidorch::metrics::install();
    let locks: Arc<dyn LockStore> = Arc::new(MeteredLockStore::new(
        Arc::new(MemoryLockStore::new()),
        "memory",
    ));
    let app = Embedded::start(&["opsmk"], locks.clone()).await;
    let ops = Ops::serve(Readiness {
        locks: locks.clone(),
        ledger: app.ledger.clone(),
        consuming: Arc::new(AtomicBool::new(true)),
    })
    .await;
    let before = ops.metrics().await;
    // One at a time (prefetch 1), in this order: job_3 meets a 503 and is retried, job_1 is
    // placed and then found final, job_2 is under budget, then a poison body.
    app.sandbox.fail_next(Fault::unavailable());
    let none = headers(&[]);
    app.broker
        .publish(posting("opsmk", "job_3", "900"), none.clone());
    app.broker
        .publish(posting("opsmk", "job_1", "900"), none.clone());
    app.broker
        .publish(posting("opsmk", "job_1", "900"), none.clone());
    app.broker
        .publish(posting("opsmk", "job_2", "50"), none.clone());
    app.broker.publish(b"{not json".to_vec(), none);

    let report = app.run_until_drained(1).await;

    assert_eq!(report.settled, 6);
    let after = ops.metrics().await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    let m = ("marketplace", "opsmk");
    assert_eq!(d("bidorch_postings_received_total", &[m]), 5.0);
    assert_eq!(
        d(
            "bidorch_postings_received_total",
            &[("marketplace", "unknown")]
        ),
        1.0
    );
    for (outcome, count) in [
        ("placed", 2.0),
        ("duplicate", 1.0),
        ("skipped", 1.0),
        ("transient", 1.0),
    ] {
        assert_eq!(
            d("bidorch_outcomes_total", &[m, ("outcome", outcome)]),
            count,
            "outcome {outcome}"
        );
    }
    assert_eq!(
        d(
            "bidorch_outcomes_total",
            &[("marketplace", "unknown"), ("outcome", "poison")]
        ),
        1.0
    );
    assert_eq!(
        d(
            "bidorch_retries_total",
            &[("reason", "marketplace_transient")]
        ),
        1.0
    );
    assert_eq!(
        d("bidorch_dead_letters_total", &[("reason", "invalid_json")]),
        1.0
    );
    assert_eq!(
        d("bidorch_pipeline_seconds_count", &[("outcome", "placed")]),
        2.0
    );
    assert_eq!(
        d(
            "bidorch_marketplace_request_seconds_count",
            &[m, ("result", "placed")]
        ),
        2.0
    );
    assert_eq!(
        d(
            "bidorch_marketplace_request_seconds_count",
            &[m, ("result", "transient")]
        ),
        1.0
    );
    // Leases: job_3 twice, job_1 once (its copy stops at the ledger), job_2 once.
    let memory = [("backend", "memory")];
    assert_eq!(d("bidorch_lock_attempts_total", &memory), 4.0);
    assert_eq!(d("bidorch_lock_successes_total", &memory), 4.0);
    assert_eq!(d("bidorch_lock_conflicts_total", &memory), 0.0);
    assert_eq!(d("bidorch_lock_timeouts_total", &memory), 0.0);
    assert_eq!(d("bidorch_redis_errors_total", &memory), 0.0);
    assert_eq!(d("bidorch_lock_acquire_seconds_count", &memory), 4.0);
    assert_eq!(after.get(IN_FLIGHT, &[]), 0.0);
    assert_eq!(after.get(LEASES_HELD, &[]), 0.0);
    // Every documented name that this run exercised is exported with its documented type.
    let not_exercised = [
        "bidorch_lock_conflicts_total",
        "bidorch_lock_timeouts_total",
        "bidorch_redis_errors_total",
    ];
    for (name, kind, _, _) in CATALOGUE {
        if not_exercised.contains(name) {
            continue;
        }
        let expected = match kind {
            bidorch::metrics::Kind::Counter => "counter",
            bidorch::metrics::Kind::Gauge => "gauge",
            bidorch::metrics::Kind::Histogram => "histogram",
        };
        assert_eq!(
            after.types.get(*name).map(String::as_str),
            Some(expected),
            "{name} in /metrics"
        );
    }
    // No series carries a posting id.
    assert!(
        after
            .values
            .iter()
            .all(|(_, labels, _)| labels.values().all(|v| !v.starts_with("job_"))),
    );

    // The leases-held gauge counts a lease from start to release.
    let lease = locks
        .try_acquire(
            &PostingKey::new("opsmk", "job_gauge").unwrap(),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .unwrap();
    let held = HeldLease::start(locks.clone(), lease);
    assert_eq!(ops.metrics().await.get(LEASES_HELD, &[]), 1.0);
    held.release().await.unwrap();
    assert_eq!(ops.metrics().await.get(LEASES_HELD, &[]), 0.0);
}

#[tokio::test]
async fn healthz_answers_while_the_process_is_up() {
    let ops = Ops::serve(Readiness {
        locks: Arc::new(MemoryLockStore::new()),
        ledger: sqlite().await,
        consuming: Arc::new(AtomicBool::new(false)),
    })
    .await;

    let (status, body) = ops.get("/healthz").await;

    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn readyz_is_unready_when_the_lock_store_cannot_be_reached() {
    let closed = RedisLockStore::with_options(
        &RedisSettings {
            url: SecretUrl::new("redis://127.0.0.1:1/0"),
            key_prefix: support::unique("ops"),
        },
        &RedisOptions {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            ..RedisOptions::default()
        },
    )
    .unwrap();
    let ops = Ops::serve(Readiness {
        locks: Arc::new(closed),
        ledger: sqlite().await,
        consuming: Arc::new(AtomicBool::new(true)),
    })
    .await;

    let (status, report) = ops.ready().await;

    assert_eq!(status, 503);
    assert!(!report.ready);
    assert_ne!(report.lock_store, "ok");
    assert_eq!(
        (report.ledger.as_str(), report.consumer.as_str()),
        ("ok", "ok")
    );
}

/// A TCP proxy in front of the real Redis: `cut` closes the listener and every connection (as
/// a stopped Redis would), `restore` listens again on the same address.
struct RedisProxy {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl RedisProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self {
            addr,
            task: Some(tokio::spawn(Self::forward(listener))),
        }
    }

    async fn forward(listener: TcpListener) {
        let upstream = url::Url::parse(&support::redis_url()).unwrap();
        let upstream = format!(
            "{}:{}",
            upstream.host_str().unwrap_or("127.0.0.1"),
            upstream.port().unwrap_or(6379)
        );
        // Owned here: aborting this task drops the set, which aborts (closes) every connection.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            connections.spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    }

    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(tokio::spawn(Self::forward(listener)));
    }
}

#[tokio::test]
async fn readyz_turns_unready_while_redis_is_unreachable_and_ready_again_after() {
    if !support::redis_available().await {
        return;
    }
    let mut proxy = RedisProxy::start().await;
    let redis = RedisLockStore::with_options(
        &RedisSettings {
            url: SecretUrl::new(format!("redis://{}/0", proxy.addr)),
            key_prefix: support::unique("ops"),
        },
        &RedisOptions {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            ..RedisOptions::default()
        },
    )
    .unwrap();
    let ops = Ops::serve(Readiness {
        locks: Arc::new(redis),
        ledger: sqlite().await,
        consuming: Arc::new(AtomicBool::new(true)),
    })
    .await;
    let report = ops.wait_ready_status(200).await;
    assert_eq!(report.lock_store, "ok");

    proxy.cut().await;
    let report = ops.wait_ready_status(503).await;
    assert!(!report.ready);
    assert_ne!(report.lock_store, "ok");
    assert_eq!(report.ledger, "ok");

    proxy.restore().await;
    let report = ops.wait_ready_status(200).await;
    assert!(report.ready);
    assert_eq!(report.lock_store, "ok");
}

#[tokio::test]
async fn readyz_follows_the_consumer_through_stop_and_restart() {
    let app = Embedded::start(&["opsready"], Arc::new(MemoryLockStore::new())).await;
    let consuming = Arc::new(AtomicBool::new(false));
    let ops = Ops::serve(Readiness {
        locks: Arc::new(MemoryLockStore::new()),
        ledger: app.ledger.clone(),
        consuming: consuming.clone(),
    })
    .await;
    let (status, report) = ops.ready().await;
    assert_eq!((status, report.consumer.as_str()), (503, "not consuming"));

    for _ in 0..2 {
        // A worker consuming makes the process ready…
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(bidorch::worker::run(
            Box::new(app.broker.consumer(4)),
            app.pipeline.clone(),
            app.options(),
            consuming.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        let report = ops.wait_ready_status(200).await;
        assert_eq!(report.consumer, "ok");

        // …and once it has stopped consuming, unready at once.
        stop.send(()).unwrap();
        worker.await.unwrap();
        assert!(!consuming.load(Ordering::SeqCst));
        let (status, report) = ops.ready().await;
        assert_eq!((status, report.consumer.as_str()), (503, "not consuming"));
    }
}
