//! The operations endpoint served on port 0 for black-box tests, and a parser of its Prometheus
//! text, shared by the readiness tests and the metrics binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bidorch::http::{Readiness, ReadyReport};
use bidorch::ledger::{BidLedger, SqliteBidLedger};
use tokio::net::TcpListener;

/// The operations endpoint on 127.0.0.1:0; stops when dropped.
pub struct Ops {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Ops {
    pub async fn serve(readiness: Readiness) -> Self {
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

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = crate::support::http_get(format!("http://{}{path}", self.addr))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn metrics(&self) -> Samples {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        Samples::parse(&text)
    }

    pub async fn ready(&self) -> (u16, ReadyReport) {
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
                paused: report["paused"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
        )
    }

    /// Polls `/readyz` until it answers `status`, within a bounded deadline.
    pub async fn wait_ready_status(&self, status: u16) -> ReadyReport {
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
pub struct Samples {
    pub values: Vec<(String, BTreeMap<String, String>, f64)>,
    pub types: BTreeMap<String, String>,
}

impl Samples {
    pub fn parse(text: &str) -> Self {
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
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
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
pub fn delta(before: &Samples, after: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

/// An in-memory SQLite ledger as the pipeline uses one (batched).
pub async fn sqlite() -> Arc<dyn BidLedger> {
    let backend = SqliteBidLedger::connect_and_migrate("sqlite::memory:")
        .await
        .unwrap();
    Arc::new(bidorch::ledger::Batched::new(Arc::new(backend)))
}
