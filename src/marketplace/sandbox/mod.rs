//! The sandbox marketplace (`bidorch marketplace`): a faithful server of the bid contract and of
//! the Freelancer.com API for tests and the demo, which counts every bid per posting so "exactly
//! one bid" can be checked.
//!
//! Every marketplace is served under its own path prefix, in both dialects at once — the
//! contract's `POST /{marketplace}/v1/postings/{posting_id}/bids`, and the Freelancer API under
//! `/{marketplace}/api/…` (`freelancer.rs`) — so a `base_url` of `http://host:8081/upwork` works
//! as in production whichever API the marketplace is configured to speak.
//! Operator endpoints: `GET /v1/stats` ([`SandboxStats`]), `GET /v1/bids/{marketplace}/
//! {posting_id}` (the [`Bid`]s recorded, with the trace context each arrived with), `GET /healthz`.
//!
//! Faults for tests and the demo: a seeded random share of requests answered `503` or `429`
//! (`Retry-After: 1`), scripted faults ([`Sandbox::fail_next`]) and a response latency applied
//! *after* the bid is recorded — a slow answer a client may give up on, whose retry must replay.

mod book;
mod freelancer;
mod routes;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::book::Book;
use self::freelancer::Projects;
use crate::posting::PostingKey;

pub use self::freelancer::SANDBOX_BIDDER_ID;

/// How the sandbox behaves.
#[derive(Clone)]
pub struct SandboxOptions {
    /// The bearer token required; `None` accepts any non-empty bearer token.
    pub token: Option<String>,
    /// Share of bid requests (0.0–1.0) answered `503` or `429` before anything is recorded.
    pub fail_rate: f64,
    /// Delay before each bid answer, after the bid is recorded.
    pub latency: Duration,
    /// Seed of the fault dice, so a run can be repeated.
    pub seed: u64,
    /// `true` (the contract): idempotency keys replay and a second key gets `409`. `false`: a
    /// naive marketplace where every request creates a bid, so `duplicates` in the stats exposes
    /// any lapse of the layers in front of the idempotency key (ledger, lease, fencing).
    pub honour_idempotency: bool,
    /// Share of placed bids (0.0–1.0) whose answer is lost: the bid is recorded, then the client
    /// gets `502` (a proxy that dropped the upstream answer), so only a replay learns the bid id.
    pub lose_rate: f64,
    /// Freelancer dialect: a second bid by the same bidder on a project is refused (`400`, as
    /// Freelancer does). `false`: it is created, and `duplicates` in the stats shows it — what
    /// tests of verify-before-resend use.
    pub refuse_second_bid: bool,
    /// Freelancer dialect: other bidders' bids on each project (some retracted), listed before
    /// ours, so lookups filter and page.
    pub rival_bids: u32,
    /// Freelancer dialect: rivals' bids delisted before each lookup page after the first, so the
    /// list changes between pages.
    pub lookup_churn: u32,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            token: None,
            fail_rate: 0.0,
            latency: Duration::ZERO,
            seed: 0,
            honour_idempotency: true,
            lose_rate: 0.0,
            refuse_second_bid: true,
            rival_bids: 0,
            lookup_churn: 0,
        }
    }
}

impl fmt::Debug for SandboxOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxOptions")
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("fail_rate", &self.fail_rate)
            .field("latency", &self.latency)
            .field("seed", &self.seed)
            .field("honour_idempotency", &self.honour_idempotency)
            .field("lose_rate", &self.lose_rate)
            .field("refuse_second_bid", &self.refuse_second_bid)
            .field("rival_bids", &self.rival_bids)
            .field("lookup_churn", &self.lookup_churn)
            .finish()
    }
}

/// A scripted answer for the next bid request, given before anything is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub status: u16,
    /// `Retry-After` header value (delta-seconds or an HTTP-date), if any.
    pub retry_after: Option<String>,
}

impl Fault {
    /// `503 Service Unavailable` without `Retry-After`.
    pub fn unavailable() -> Self {
        Self {
            status: 503,
            retry_after: None,
        }
    }

    /// `429 Too Many Requests` with the given `Retry-After` value.
    pub fn rate_limited(retry_after: impl Into<String>) -> Self {
        Self {
            status: 429,
            retry_after: Some(retry_after.into()),
        }
    }
}

/// One bid as the sandbox recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    pub bid_id: String,
    pub marketplace: String,
    pub posting_id: String,
    pub idempotency_key: String,
    /// The amount exactly as sent, e.g. `"450.00"`.
    pub amount: String,
    pub currency: String,
    pub cover_letter: String,
    /// The W3C trace context the creating request carried.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// SHA-256 of the creating request's body: a replay of the key must send the same bytes.
    pub request_sha256: String,
    /// When the sandbox created the bid (its own clock): publish→bid latency, rate limits.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Counters for one posting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostingStats {
    /// Bids created: never more than 1 while idempotency is honoured.
    pub bids: u64,
    /// Bid requests received for the posting, whatever their answer.
    pub requests: u64,
    pub replays: u64,
    pub conflicts: u64,
    /// The `traceparent` of the latest request that carried one.
    pub last_traceparent: Option<String>,
    /// The trace ids of every request's and lookup's `traceparent` (one, when the posting kept
    /// one trace).
    #[serde(default)]
    pub trace_ids: std::collections::BTreeSet<String>,
    /// Lookups of the posting's bids (Freelancer dialect).
    #[serde(default)]
    pub lookups: u64,
}

/// `GET /v1/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// Bid requests received (all answers).
    pub requests: u64,
    /// `201`s.
    pub bids_created: u64,
    /// `200`s: the idempotency key was seen before — a duplicate stopped by the key.
    pub replays: u64,
    /// `409`s: a bid exists under another key (Freelancer dialect: a second bid refused).
    pub conflicts: u64,
    /// Lookups of bids (Freelancer dialect).
    #[serde(default)]
    pub lookups: u64,
    /// `4xx` refusals before placement (auth, missing key, bad body, a replay with another body).
    pub rejected: u64,
    /// Injected `429`/`503` answers.
    pub faults: u64,
    /// Bids recorded whose answer was then lost (`502`).
    pub lost_responses: u64,
    /// Per `"{marketplace}:{posting_id}"`.
    pub postings: BTreeMap<String, PostingStats>,
    /// Postings with more than one bid: must stay empty.
    pub duplicates: Vec<String>,
}

/// The sandbox: cheap to clone, all clones share one book of bids.
#[derive(Clone, Debug)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: SandboxOptions,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    book: Book,
    dice: fastrand::Rng,
    scripted: VecDeque<Fault>,
    /// Answers every bid request while set (an outage, for as long as a test wants).
    outage: Option<Fault>,
    /// How many of the next placements have their answer lost.
    lose_next: u32,
    /// `/v1/score` answers 503 while set.
    scoring_down: bool,
    /// `/v1/score` answers given.
    scored: u64,
    /// The bearer token required now (starts as [`SandboxOptions::token`]; tests rotate it).
    token: Option<String>,
    /// The Freelancer dialect's projects: bid lists, closed projects.
    projects: Projects,
}

impl State {
    /// Whether this placement's answer is lost: a scripted loss first, else the dice.
    fn lose_answer(&mut self, rate: f64) -> bool {
        if self.lose_next > 0 {
            self.lose_next -= 1;
            return true;
        }
        rate > 0.0 && self.dice.f64() < rate
    }
}

impl Sandbox {
    /// A sandbox with an empty book.
    pub fn new(options: SandboxOptions) -> Self {
        let dice = fastrand::Rng::with_seed(options.seed);
        let token = options.token.clone();
        Self {
            inner: Arc::new(Inner {
                options,
                state: Mutex::new(State {
                    book: Book::default(),
                    dice,
                    scripted: VecDeque::new(),
                    outage: None,
                    lose_next: 0,
                    scoring_down: false,
                    scored: 0,
                    token,
                    projects: Projects::default(),
                }),
            }),
        }
    }

    /// The HTTP routes (bids under `/{marketplace}/…`, stats, bids, health).
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SandboxStats {
        self.state().book.stats()
    }

    /// The bids recorded for a posting (at most one while idempotency is honoured).
    pub fn bids(&self, key: &PostingKey) -> Vec<Bid> {
        self.state().book.bids(&key.to_string())
    }

    /// Answers the next bid request with `fault` (queued; scripted faults come before random ones).
    pub fn fail_next(&self, fault: Fault) {
        self.state().scripted.push_back(fault);
    }

    /// Answers every bid request with `fault` until called again with `None` (a marketplace
    /// outage that lasts as long as the caller wants; scripted faults still come first).
    pub fn set_outage(&self, fault: Option<Fault>) {
        self.state().outage = fault;
    }

    /// Records the next `n` placements (new bids and replays) but loses their answers: the
    /// client sees `502` although the bid exists.
    pub fn lose_next_responses(&self, n: u32) {
        self.state().lose_next += n;
    }

    /// Makes the stand-in scoring service answer 503 (`true`) or score again (`false`).
    pub fn set_scoring_down(&self, down: bool) {
        self.state().scoring_down = down;
    }

    /// Postings the stand-in scoring service has scored.
    pub fn scored(&self) -> u64 {
        self.state().scored
    }

    /// Requires `token` from now on (`None`: any non-empty bearer token): a revoked or rotated
    /// credential, as the worker's marketplace sees it.
    pub fn set_token(&self, token: Option<String>) {
        self.state().token = token;
    }

    /// Closes the project `key` names (Freelancer dialect): bids on it and lookups of it answer
    /// `404` from now on, as for a project deleted or closed for bidding.
    pub fn close_project(&self, key: &PostingKey) {
        self.state().projects.close(&key.to_string());
    }

    fn options(&self) -> &SandboxOptions {
        &self.inner.options
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain counters updated without panicking code paths; a poisoned lock
        // still holds consistent data.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A sandbox served in-process on an ephemeral loopback port (the demo, tests, and
/// `marketplace.kind = "sandbox"`), until dropped.
pub struct SandboxServer {
    sandbox: Sandbox,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SandboxServer {
    /// Binds `127.0.0.1:0` and serves a new sandbox there.
    pub async fn start(options: SandboxOptions) -> std::io::Result<Self> {
        let sandbox = Sandbox::new(options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, sandbox.clone(), async {
            let _ = stopped.await;
        }));
        Ok(Self {
            sandbox,
            url,
            stop: Some(stop),
        })
    }

    /// The sandbox (stats, scripted faults).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// `http://127.0.0.1:{port}`; marketplace `m` is served under `{url}/{m}`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for SandboxServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `sandbox` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sandbox: Sandbox,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, options = ?sandbox.options(), "Sandbox marketplace listening");
    }
    axum::serve(listener, sandbox.router())
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("Sandbox marketplace stopped");
    Ok(())
}
