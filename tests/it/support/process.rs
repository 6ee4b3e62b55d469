//! `bidorch worker` as a separate process, as the product is run: its own environment (nothing
//! from the developer's shell), a free `http.addr`, JSON logs in a file shown when a test fails,
//! signals (TERM, KILL, STOP, CONT) and a look at its `/readyz` and `/metrics`. Logs are kept
//! (in the temp directory) when a test fails, or always with `BIDORCH_KEEP_WORKER_LOGS` set.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::support::free_addr;

/// One `bidorch worker` child process.
pub struct WorkerProcess {
    pub name: String,
    pub addr: String,
    log: PathBuf,
    child: Option<Child>,
}

impl WorkerProcess {
    /// Starts `bidorch worker` with exactly `env` (plus `PATH`, its `http.addr`, JSON logs).
    pub fn spawn(name: &str, env: &[(String, String)]) -> Self {
        let addr = free_addr();
        let log = std::env::temp_dir().join(format!("{}.log", crate::support::unique(name)));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file handle");
        let child = Command::new(env!("CARGO_BIN_EXE_bidorch"))
            .arg("worker")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BIDORCH__HTTP__ADDR", &addr)
            .env("BIDORCH__TELEMETRY__LOG_FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("bidorch worker starts");
        Self {
            name: name.to_owned(),
            addr,
            log,
            child: Some(child),
        }
    }

    /// Whether the process is still ours to signal (not yet seen to exit or killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id (while running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// SIGTERM, as an orchestrator stops a container.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) for the process to exit.
    pub async fn exit_status(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not exit within {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET path` on the worker's operations endpoint: status and body, if it answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = crate::support::http_get(format!("http://{}{path}", self.addr))
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// The value of the series `series` (name plus labels, as exposed) on `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (200, text) = self.get("/metrics").await? else {
            return None;
        };
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// `/readyz`: its status and JSON body, if it answers.
    pub async fn ready(&self) -> Option<(u16, Value)> {
        let (status, body) = self.get("/readyz").await?;
        Some((status, serde_json::from_str(&body).ok()?))
    }

    /// Everything the worker has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log records whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

impl Drop for WorkerProcess {
    /// Never leaves a worker behind, also when the test fails halfway; shows its log tail then.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!(
                "--- worker {} log tail ({}):",
                self.name,
                self.log.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{}", line.chars().take(300).collect::<String>());
            }
        } else if std::env::var_os("BIDORCH_KEEP_WORKER_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
