//! A fleet of `bidorch worker` processes on the real services, fed a known set of postings, for
//! the fault scenarios: each scenario gets its own queue and exchange names, ledger schema and
//! Redis key prefix, and checks the promise at the end — every eligible posting bid exactly once,
//! none of the others, nothing parked, nothing left in any queue, the ledger agreeing.

use std::collections::BTreeMap;
use std::time::Duration;

use bidorch::config::Settings;
use bidorch::ledger::LedgerState;
use bidorch::marketplace::sandbox::{Sandbox, SandboxOptions};
use bidorch::publish::{OutgoingEvent, Publisher};
use serde_json::json;

use super::process::WorkerProcess;
use super::queue::{Cleanup, Inspector, eventually};

/// A command's standard output then standard error, as one text.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The token the sandbox requires and the workers present.
pub const TOKEN: &str = "scenario-token";

/// What a scenario publishes and what must come of it.
pub struct Load {
    pub events: Vec<OutgoingEvent>,
    pub eligible: Vec<String>,
    pub ineligible: Vec<String>,
    /// Poison messages published besides the events: exactly these may be parked.
    pub poison: usize,
}

impl Load {
    /// Both loads as one (their postings are disjoint when their prefixes are).
    pub fn join(self, other: Load) -> Load {
        Load {
            events: [self.events, other.events].concat(),
            eligible: [self.eligible, other.eligible].concat(),
            ineligible: [self.ineligible, other.ineligible].concat(),
            poison: self.poison + other.poison,
        }
    }
}

/// `n` postings over two marketplaces, every fifth under the minimum budget, each published
/// `copies` times, the copies interleaved far apart.
pub fn load(prefix: &str, n: usize, copies: usize) -> Load {
    let postings = (0..n).map(|i| {
        let marketplace = if i % 2 == 0 { "upwork" } else { "freelancer" };
        (marketplace, format!("{prefix}_{i:04}"))
    });
    load_of(postings.collect(), copies)
}

/// `n` postings for a `freelancer` marketplace on the Freelancer API, with project ids (every
/// other one on `upwork`, the contract, when `mixed`), every fifth under the minimum budget, each
/// published `copies` times, the copies far apart.
pub fn api_load(n: usize, copies: usize, mixed: bool) -> Load {
    let postings = (0..n).map(|i| {
        if mixed && i % 2 == 1 {
            ("upwork", format!("job_{i:05}"))
        } else {
            ("freelancer", (70_000_000 + i).to_string())
        }
    });
    load_of(postings.collect(), copies)
}

/// The events of `postings` (every fifth under the minimum budget), each published `copies`
/// times, the copies interleaved far apart.
fn load_of(postings: Vec<(&str, String)>, copies: usize) -> Load {
    let n = postings.len();
    let (mut bodies, mut eligible, mut ineligible) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (marketplace, posting_id)) in postings.into_iter().enumerate() {
        let cheap = i % 5 == 4;
        let key = format!("{marketplace}:{posting_id}");
        if cheap {
            ineligible.push(key);
        } else {
            eligible.push(key);
        }
        let body = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "marketplace": marketplace,
            "posting_id": posting_id,
            "title": "Keep the promise through an outage",
            "budget": {"min": 10, "max": if cheap { "50" } else { "1200.00" }, "currency": "USD"},
        });
        bodies.push(OutgoingEvent::parse(body.to_string()).expect("valid event"));
    }
    let mut events = Vec::new();
    for round in 0..copies {
        for i in 0..n {
            events.push(bodies[(i + round * 37) % n].clone());
        }
    }
    Load {
        events,
        eligible,
        ineligible,
        poison: 0,
    }
}

/// One scenario's world.
pub struct Scenario {
    pub names: String,
    pub sandbox: Sandbox,
    pub sandbox_url: String,
    /// The settings the workers run with (the test's own clients use them too).
    pub settings: Settings,
    env: Vec<(String, String)>,
    pub workers: Vec<WorkerProcess>,
    pub ledger: bidorch::app::LedgerPorts,
    _cleanup: Cleanup,
}

impl Scenario {
    /// Serves a sandbox, derives names, and builds the worker environment: the defaults, the
    /// shared services, then `overrides` (which may point a service elsewhere, e.g. a proxy).
    /// `None` (after the skip rule) when a service is missing.
    pub async fn start(
        prefix: &str,
        sandbox: SandboxOptions,
        overrides: &[(&str, String)],
    ) -> Option<Self> {
        if !(super::amqp_available().await
            && super::redis_available().await
            && super::postgres_available().await)
        {
            return None;
        }
        let (sandbox, sandbox_url) = super::serve_sandbox(SandboxOptions {
            token: Some(TOKEN.to_owned()),
            ..sandbox
        })
        .await;
        let names = super::unique(prefix);
        let mut env: BTreeMap<String, String> = [
            ("AMQP_URL", super::amqp_url()),
            ("REDIS_URL", super::redis_url()),
            ("DATABASE_URL", super::database_url()),
            ("BIDORCH__AMQP__EXCHANGE", format!("{names}.ex")),
            ("BIDORCH__AMQP__QUEUE", names.clone()),
            ("BIDORCH__REDIS__KEY_PREFIX", format!("{names}:")),
            ("BIDORCH__DATABASE__SCHEMA", names.clone()),
            ("BIDORCH__DATABASE__MAX_CONNECTIONS", "4".to_owned()),
            ("BIDORCH__BIDDING__MIN_BUDGET", "100".to_owned()),
            ("BIDORCH__WORKER__SHUTDOWN_GRACE", "5s".to_owned()),
            ("BIDORCH_UPWORK_TOKEN", TOKEN.to_owned()),
            ("BIDORCH_FREELANCER_TOKEN", TOKEN.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for m in ["upwork", "freelancer"] {
            let upper = m.to_uppercase();
            env.insert(
                format!("BIDORCH__MARKETPLACES__{upper}__BASE_URL"),
                format!("{sandbox_url}/{m}"),
            );
            env.insert(
                format!("BIDORCH__MARKETPLACES__{upper}__TOKEN_ENV"),
                format!("BIDORCH_{upper}_TOKEN"),
            );
        }
        for (k, v) in overrides {
            env.insert((*k).to_owned(), v.clone());
        }
        let mut own = env.clone();
        // The test's own view of the ledger: directly, never through a proxy it cuts.
        own.insert("DATABASE_URL".to_owned(), super::database_url());
        let own: std::collections::HashMap<String, String> = own.into_iter().collect();
        let settings = Settings::load_from(None, &own).expect("scenario settings are valid");
        let ledger = bidorch::app::ledger(&settings.database)
            .await
            .expect("the scenario's ledger");
        Some(Self {
            names,
            sandbox,
            sandbox_url,
            _cleanup: Cleanup(settings.amqp.clone()),
            settings,
            env: env.into_iter().collect(),
            workers: Vec::new(),
            ledger,
        })
    }

    /// The workers' environment, plus `extra` (later ones win).
    pub fn env_with(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env
    }

    /// Runs `bidorch args…` as an operator would, with the workers' environment plus `extra`
    /// and nothing else, off the runtime.
    pub async fn command(&self, args: &[&str], extra: &[(&str, String)]) -> std::process::Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bidorch"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env_with(extra));
        tokio::task::spawn_blocking(move || cmd.output().expect("bidorch runs"))
            .await
            .expect("join")
    }

    /// Starts worker `name` (instance id `{names}-{name}`) with the scenario's environment.
    pub fn spawn_worker(&mut self, name: &str) -> usize {
        self.spawn_worker_with(name, &[])
    }

    /// [`spawn_worker`](Self::spawn_worker) with extra environment variables.
    pub fn spawn_worker_with(&mut self, name: &str, extra: &[(&str, String)]) -> usize {
        let mut extra = extra.to_vec();
        extra.insert(
            0,
            (
                "BIDORCH__WORKER__INSTANCE_ID",
                format!("{}-{name}", self.names),
            ),
        );
        let env = self.env_with(&extra);
        self.workers.push(WorkerProcess::spawn(name, &env));
        self.workers.len() - 1
    }

    /// Waits until every running worker's `/readyz` answers 200 (they are up and consuming).
    pub async fn wait_ready(&self) {
        for w in self.workers.iter().filter(|w| w.is_running()) {
            eventually(
                Duration::from_secs(60),
                &format!("worker {} ready", w.name),
                || async { matches!(w.ready().await, Some((200, _))) },
            )
            .await;
        }
    }

    /// Publishes `events` with confirms.
    pub async fn publish(&self, events: &[OutgoingEvent]) {
        let publisher = Publisher::connect(&self.settings.amqp)
            .await
            .expect("publisher connects");
        for r in publisher.publish_many(events).await {
            r.expect("event confirmed");
        }
        publisher.close().await;
    }

    /// Messages in the work and wait queues (ready; in-flight ones are not counted).
    pub async fn waiting(&self, inspector: &Inspector) -> u32 {
        let mut n = inspector.ready(&self.settings.amqp.queue).await;
        for tier in &self.settings.amqp.retry_tiers {
            n += inspector
                .ready(&self.settings.amqp.retry_queue(*tier))
                .await;
        }
        n
    }

    /// Waits (up to `limit`) until every posting of `load` has a final row and nothing waits.
    pub async fn wait_settled(&self, load: &Load, limit: Duration) {
        let inspector = Inspector::connect().await;
        let postings = (load.eligible.len() + load.ineligible.len()) as u64;
        eventually(
            limit,
            "every posting final and the queues drained",
            || async {
                if super::final_rows(&*self.ledger.reports).await != postings
                    || self.waiting(&inspector).await != 0
                {
                    return false;
                }
                // Nothing in flight either: an unfinished duplicate may still go back to wait.
                for w in &self.workers {
                    if w.metric("bidorch_postings_in_flight").await.unwrap_or(0.0) > 0.0 {
                        return false;
                    }
                }
                self.waiting(&inspector).await == 0
            },
        )
        .await;
    }

    /// The promise, checked: one bid per eligible posting, none for the others, nothing parked,
    /// nothing waiting, the ledger in agreement. Returns the sandbox's request count.
    pub async fn assert_promise(&self, load: &Load) -> u64 {
        let stats = self.sandbox.stats();
        assert!(
            stats.duplicates.is_empty(),
            "duplicates: {:?}",
            stats.duplicates
        );
        let bids = |k: &String| stats.postings.get(k).map_or(0, |p| p.bids);
        let missing: Vec<&String> = load.eligible.iter().filter(|k| bids(k) != 1).collect();
        assert!(
            missing.is_empty(),
            "{} eligible postings without exactly one bid: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert!(
            load.ineligible.iter().all(|k| bids(k) == 0),
            "an ineligible posting got a bid"
        );
        assert_eq!(stats.bids_created, load.eligible.len() as u64);
        let counts: BTreeMap<LedgerState, u64> = self
            .ledger
            .reports
            .counts_by_state()
            .await
            .expect("ledger counts")
            .into_iter()
            .collect();
        assert_eq!(
            counts[&LedgerState::Placed],
            load.eligible.len() as u64,
            "{counts:?}"
        );
        assert_eq!(
            counts[&LedgerState::Skipped],
            load.ineligible.len() as u64,
            "{counts:?}"
        );
        assert_eq!(counts[&LedgerState::Rejected], 0, "{counts:?}");
        assert_eq!(counts[&LedgerState::Pending], 0, "{counts:?}");
        let inspector = Inspector::connect().await;
        let parked = inspector
            .drain(&self.settings.amqp.dead_letter_queue())
            .await;
        let reasons: Vec<String> = parked
            .iter()
            .map(|m| {
                m.delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("x-bidorch-reason").cloned())
                    .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"))
            })
            .collect();
        // Exactly the poison, each at least once: a connection closed between parking a message
        // and acking its delivery parks it again on redelivery (at-least-once, nothing lost).
        let distinct: std::collections::BTreeSet<&[u8]> =
            parked.iter().map(|m| m.delivery.data.as_slice()).collect();
        assert_eq!(distinct.len(), load.poison, "parked messages: {reasons:?}");
        assert!(
            reasons
                .iter()
                .all(|r| !r.contains("max_attempts") && !r.contains("retry_budget")),
            "only poison is parked: {reasons:?}"
        );
        assert_eq!(self.waiting(&inspector).await, 0, "messages left waiting");
        stats.requests
    }

    /// Stops every running worker with SIGTERM and checks each exits 0.
    pub async fn stop(&mut self) {
        for w in self.workers.iter().filter(|w| w.is_running()) {
            w.terminate();
        }
        for w in self.workers.iter_mut().filter(|w| w.is_running()) {
            let status = w.exit_status(Duration::from_secs(30)).await;
            assert!(status.success(), "worker {} exited {status}", w.name);
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.kill();
        }
        let (schema, prefix) = (self.names.clone(), format!("{}:", self.names));
        // Best effort, also after a failed assertion: on a runtime of its own (Drop is sync).
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async {
                super::drop_schema(&schema).await;
                super::delete_redis_prefix(&prefix).await;
            });
        })
        .join();
    }
}
