//! Every row of the outcome table produced from its *situation*, through the pipeline, on the
//! real services: the PostgreSQL ledger (a schema of its own), Redis leases (a key prefix of
//! its own) and the sandbox marketplace over HTTP. Faults come from thin wrappers around the
//! real ports — a holder paused past its TTL, a rival's claim between the call and the record, a
//! TCP proxy cut in front of Redis or PostgreSQL at a chosen step — never from a port that
//! returns a made-up error.
//!
//! Also here: the lost-response scenarios of the exactly-once issue (attempt 1 places the bid,
//! its answer is lost, then the policy would say no), `bidorch reconcile` and `bidorch inspect`.

use std::future::Future;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use bidorch::app::{LedgerPorts, System};
use bidorch::config::Settings;
use bidorch::ledger::{
    BidLedger, Claim, ClaimRequest, Fenced, Finish, Intent, LedgerEntry, LedgerError, LedgerState,
};
use bidorch::lock::{HolderInfo, Lease, LockError, LockStore, Release};
use bidorch::marketplace::HttpMarketplace;
use bidorch::marketplace::sandbox::{Fault, Sandbox, SandboxOptions};
use bidorch::pipeline::{AttemptContext, Component, Outcome, PlacedVia};
use bidorch::posting::PostingKey;

use crate::support;
use support::proxy::{TcpProxy, host_port};

const TOKEN: &str = "pipeline-token";

/// One test's slice of the real services.
struct Stack {
    names: String,
    sandbox: Sandbox,
    sandbox_url: String,
}

impl Stack {
    /// The settings a worker of this test would load, with `overrides` on top.
    fn settings(&self, overrides: &[(&str, String)]) -> Settings {
        support::run_settings(&self.names, &self.sandbox_url, overrides)
    }

    /// The environment `bidorch` commands of this test run with.
    fn env(&self, overrides: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            support::run_env(&self.names, &self.sandbox_url, overrides)
                .into_iter()
                .collect();
        env.push(("BIDORCH_UPWORK_TOKEN".to_owned(), TOKEN.to_owned()));
        env.push(("BIDORCH_FREELANCER_TOKEN".to_owned(), TOKEN.to_owned()));
        env
    }

    /// A system as `bidorch worker` builds it, with these ports swapped in.
    async fn system(
        &self,
        settings: &Settings,
        ledger: Option<LedgerPorts>,
        locks: Option<Arc<dyn LockStore>>,
    ) -> System {
        let client = HttpMarketplace::new(&settings.marketplaces, settings.lock.ttl, |_| {
            Some(TOKEN.to_owned())
        })
        .expect("test marketplaces are valid");
        let mut builder = System::builder(settings).marketplace(Arc::new(client));
        if let Some(ledger) = ledger {
            builder = builder.ledger(ledger);
        }
        if let Some(locks) = locks {
            builder = builder.locks(locks);
        }
        builder.build().await.expect("the test system starts")
    }

    /// The real ledger and lock store of `settings`.
    async fn real_ports(&self, settings: &Settings) -> (LedgerPorts, Arc<dyn LockStore>) {
        let ledger = bidorch::app::ledger(&settings.database)
            .await
            .expect("the test ledger opens");
        let locks = bidorch::app::locks(settings.lock.kind, &settings.redis, "test")
            .expect("the test lock store opens")
            .locks;
        (ledger, locks)
    }

    /// Requests the sandbox received for `key`, whatever their answer.
    fn requests(&self, key: &PostingKey) -> u64 {
        self.sandbox
            .stats()
            .postings
            .get(&key.to_string())
            .map_or(0, |p| p.requests)
    }

    /// Bids the sandbox holds for `key`.
    fn bids(&self, key: &PostingKey) -> Vec<String> {
        self.sandbox
            .bids(key)
            .into_iter()
            .map(|b| b.bid_id)
            .collect()
    }
}

/// Runs `test` on a fresh stack (skipped without PostgreSQL or Redis); drops the schema and the
/// Redis keys afterwards, also when `test` panics.
async fn with_stack<F, Fut>(options: SandboxOptions, test: F)
where
    F: FnOnce(Arc<Stack>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if !support::postgres_available().await || !support::redis_available().await {
        return; // skipped, said by the check
    }
    let (sandbox, sandbox_url) = support::serve_sandbox(options).await;
    let stack = Arc::new(Stack {
        names: support::unique("pl"),
        sandbox,
        sandbox_url,
    });
    let outcome = tokio::spawn(test(stack.clone())).await;
    support::drop_schema(&stack.names).await;
    support::delete_redis_prefix(&format!("{}:", stack.names)).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn key(posting_id: &str) -> PostingKey {
    PostingKey::new("upwork", posting_id).expect("a valid key")
}

/// An event for `posting_id` with this title and maximum budget (USD).
fn event(posting_id: &str, title: &str, max_budget: &str) -> Vec<u8> {
    serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "marketplace": "upwork",
        "posting_id": posting_id,
        "title": title,
        "description": "Build a small service.",
        "skills": ["rust"],
        "budget": {"min": "100", "max": max_budget, "currency": "USD"},
        "client": {"payment_verified": true, "rating": 4.8, "country": "DE"},
    })
    .to_string()
    .into_bytes()
}

/// Runs one event through `system`'s pipeline.
async fn process(system: &System, body: &[u8]) -> Outcome {
    let pipeline = system.pipeline();
    let posting = pipeline.parse(body).expect("the test event is valid");
    let context = AttemptContext {
        event_id: posting.event_id.clone(),
        ..AttemptContext::default()
    };
    pipeline.process(&posting, &context).await
}

async fn row(ledger: &dyn BidLedger, key: &PostingKey) -> LedgerEntry {
    ledger
        .lookup(key)
        .await
        .expect("lookup")
        .expect("the posting has a row")
}

/// The bidding rules these tests run with: budgets from 200, no "crypto".
fn rules() -> Vec<(&'static str, String)> {
    vec![
        ("BIDORCH__BIDDING__MIN_BUDGET", "200".to_owned()),
        ("BIDORCH__BIDDING__BLOCKED_KEYWORDS", "crypto".to_owned()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Fault-injecting wrappers around the real ports.

/// The real lock store, except that the next lease it grants comes back already a TTL old: the
/// holder was paused (GC, SIGSTOP, a starved node) between taking it and calling.
struct PausedHolder {
    inner: Arc<dyn LockStore>,
    armed: AtomicBool,
}

#[async_trait]
impl LockStore for PausedHolder {
    async fn try_acquire(
        &self,
        key: &PostingKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        let lease = self.inner.try_acquire(key, ttl).await?;
        Ok(lease.map(|mut lease| {
            if self.armed.swap(false, Ordering::SeqCst) {
                // The lease really expires in Redis too while "paused", so a rival could take it.
                if let Some(past) = lease.acquired_at.checked_sub(ttl) {
                    lease.acquired_at = past;
                }
            }
            lease
        }))
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        self.inner.extend(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<Release, LockError> {
        self.inner.release(lease).await
    }
    async fn holder(&self, key: &PostingKey) -> Result<Option<HolderInfo>, LockError> {
        self.inner.holder(key).await
    }
    async fn health(&self) -> Result<(), LockError> {
        self.inner.health().await
    }
}

/// What happens right before the next `finish`.
enum BeforeFinish {
    /// A rival worker claims the posting (its epoch supersedes ours).
    RivalClaim,
    /// The connection to PostgreSQL is cut (the ledger's pool goes through this proxy).
    Cut(tokio::sync::Mutex<TcpProxy>),
}

/// The real ledger, with `hook` run once before the next finish.
struct Hooked {
    inner: Arc<dyn BidLedger>,
    hook: BeforeFinish,
    armed: AtomicBool,
}

#[async_trait]
impl BidLedger for Hooked {
    async fn lookup(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        self.inner.lookup(key).await
    }
    async fn claim(&self, claim: &ClaimRequest) -> Result<Claim, LedgerError> {
        self.inner.claim(claim).await
    }
    async fn finish(
        &self,
        key: &PostingKey,
        epoch: i64,
        finish: Finish,
    ) -> Result<Fenced, LedgerError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            match &self.hook {
                BeforeFinish::RivalClaim => {
                    let rival = ClaimRequest {
                        key: key.clone(),
                        event_id: "rival-event".to_owned(),
                        intent: Intent::Resend,
                        instance: "rival".to_owned(),
                        trace_id: None,
                        trace_parent: None,
                        daily_cap: None,
                        day: Utc::now().date_naive(),
                    };
                    let claimed = self.inner.claim(&rival).await.expect("the rival claims");
                    assert!(
                        matches!(claimed, Claim::Send { resend: true, .. }),
                        "{claimed:?}"
                    );
                }
                BeforeFinish::Cut(proxy) => proxy.lock().await.cut().await,
            }
        }
        self.inner.finish(key, epoch, finish).await
    }
    async fn health(&self) -> Result<(), LedgerError> {
        self.inner.health().await
    }
}

// ---------------------------------------------------------------------------------------------
// The outcome table, row by row.

#[tokio::test]
async fn a_final_row_acks_a_duplicate_without_calling_again() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let system = stack.system(&settings, None, None).await;
        let k = key("dup");
        let first = process(&system, &event("dup", "Rust service", "500")).await;
        assert!(
            matches!(
                first,
                Outcome::Placed {
                    via: PlacedVia::New,
                    ..
                }
            ),
            "{first:?}"
        );
        let again = process(&system, &event("dup", "Rust service", "500")).await;
        assert!(
            matches!(again, Outcome::Duplicate(LedgerState::Placed)),
            "{again:?}"
        );
        assert_eq!(stack.requests(&k), 1, "the duplicate was not sent");
    })
    .await;
}

#[tokio::test]
async fn a_held_lease_is_rechecked_after_retry_lock_held_not_after_the_holders_lease() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, locks) = stack.real_ports(&settings).await;
        let system = stack
            .system(&settings, Some(ledger), Some(locks.clone()))
            .await;
        let k = key("held");
        let rival = locks
            .try_acquire(&k, Duration::from_secs(600))
            .await
            .expect("Redis answers")
            .expect("the rival takes the lease");
        let outcome = process(&system, &event("held", "Rust service", "500")).await;
        let Outcome::LockHeld { retry_in } = outcome else {
            panic!("expected LockHeld, got {outcome:?}");
        };
        let recheck = settings.worker.retry_lock_held;
        assert!(
            retry_in >= recheck && retry_in <= recheck + recheck / 4,
            "rechecks after worker.retry_lock_held plus jitter, not the holder's 10 min: {retry_in:?}"
        );
        assert_eq!(stack.requests(&k), 0);
        locks.release(&rival).await.expect("release");
        let outcome = process(&system, &event("held", "Rust service", "500")).await;
        assert!(matches!(outcome, Outcome::Placed { .. }), "{outcome:?}");
    })
    .await;
}

#[tokio::test]
async fn the_policy_saying_no_records_skipped_with_its_reasons() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.real_ports(&settings).await;
        let system = stack.system(&settings, Some(ledger.clone()), None).await;
        let k = key("skip");
        let outcome = process(&system, &event("skip", "A crypto bot", "500")).await;
        let Outcome::Skipped { reasons } = outcome else {
            panic!("expected Skipped, got {outcome:?}");
        };
        assert!(
            reasons.iter().any(|r| r.contains("blocked_keyword")),
            "{reasons:?}"
        );
        let entry = row(&*ledger.ledger, &k).await;
        assert_eq!(entry.state, LedgerState::Skipped);
        assert!(entry.detail.unwrap_or_default().contains("blocked_keyword"));
        assert_eq!(stack.requests(&k), 0);
    })
    .await;
}

#[tokio::test]
async fn a_409_is_recorded_placed_with_the_existing_bid() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.real_ports(&settings).await;
        let system = stack.system(&settings, Some(ledger.clone()), None).await;
        let k = key("conflict");
        // Someone else (another tool, by hand) already bid under another key.
        let existing: serde_json::Value = support::client()
            .post(format!("{}/upwork/v1/postings/conflict/bids", stack.sandbox_url))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", "someone-else")
            .json(&serde_json::json!({
                "posting_id": "conflict",
                "amount": {"value": "300.00", "currency": "USD"},
                "cover_letter": "by hand",
            }))
            .send()
            .await
            .expect("the sandbox answers")
            .json()
            .await
            .expect("a JSON answer");
        let existing_id = existing["bid_id"].as_str().expect("a bid id").to_owned();
        let outcome = process(&system, &event("conflict", "Rust service", "500")).await;
        assert!(
            matches!(&outcome, Outcome::Placed { via: PlacedVia::Conflict, bid_id: Some(id) } if *id == existing_id),
            "{outcome:?}"
        );
        let entry = row(&*ledger.ledger, &k).await;
        assert_eq!(entry.state, LedgerState::Placed);
        assert_eq!(entry.bid_id.as_deref(), Some(existing_id.as_str()));
        assert_eq!(stack.bids(&k).len(), 1, "still one bid");
    })
    .await;
}

#[tokio::test]
async fn a_422_is_recorded_rejected_with_its_status() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.real_ports(&settings).await;
        let system = stack.system(&settings, Some(ledger.clone()), None).await;
        let k = key("refused");
        stack.sandbox.fail_next(Fault {
            status: 422,
            retry_after: None,
        });
        let outcome = process(&system, &event("refused", "Rust service", "500")).await;
        assert!(
            matches!(outcome, Outcome::Rejected { status: 422 }),
            "{outcome:?}"
        );
        let entry = row(&*ledger.ledger, &k).await;
        assert_eq!(entry.state, LedgerState::Rejected);
        assert!(entry.detail.unwrap_or_default().contains("422"));
    })
    .await;
}

#[tokio::test]
async fn a_refused_token_pauses_the_marketplace_and_never_records_rejected() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.real_ports(&settings).await;
        let system = stack.system(&settings, Some(ledger.clone()), None).await;
        let k = key("revoked");
        stack.sandbox.set_token(Some("rotated".to_owned()));
        let outcome = process(&system, &event("revoked", "Rust service", "500")).await;
        assert!(
            matches!(outcome, Outcome::MarketplacePaused { .. }),
            "{outcome:?}"
        );
        let entry = row(&*ledger.ledger, &k).await;
        assert_eq!(entry.state, LedgerState::Pending, "never rejected on 401");
        // Its marketplace is paused now: the next posting waits without a call.
        let before = stack.sandbox.stats().requests;
        let next = process(&system, &event("revoked-2", "Rust service", "500")).await;
        assert!(
            matches!(next, Outcome::MarketplacePaused { .. }),
            "{next:?}"
        );
        assert_eq!(
            stack.sandbox.stats().requests,
            before,
            "a paused marketplace is not called"
        );
    })
    .await;
}

#[tokio::test]
async fn a_503_keeps_the_row_pending_and_counts_as_the_postings_own_failure() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.real_ports(&settings).await;
        let system = stack.system(&settings, Some(ledger.clone()), None).await;
        let k = key("busy");
        stack.sandbox.fail_next(Fault::unavailable());
        let outcome = process(&system, &event("busy", "Rust service", "500")).await;
        assert!(
            matches!(outcome, Outcome::Transient { counts: true, .. }),
            "{outcome:?}"
        );
        assert_eq!(row(&*ledger.ledger, &k).await.state, LedgerState::Pending);
        let outcome = process(&system, &event("busy", "Rust service", "500")).await;
        assert!(matches!(outcome, Outcome::Placed { .. }), "{outcome:?}");
        assert_eq!(stack.bids(&k).len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_lease_lost_before_the_call_makes_no_call() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, locks) = stack.real_ports(&settings).await;
        let paused: Arc<dyn LockStore> = Arc::new(PausedHolder {
            inner: locks.clone(),
            armed: AtomicBool::new(true),
        });
        let system = stack
            .system(&settings, Some(ledger.clone()), Some(paused))
            .await;
        let k = key("paused");
        let outcome = process(&system, &event("paused", "Rust service", "500")).await;
        assert!(matches!(outcome, Outcome::LeaseLost), "{outcome:?}");
        assert_eq!(stack.requests(&k), 0, "no call after the lease was lost");
        assert_eq!(row(&*ledger.ledger, &k).await.state, LedgerState::Pending);
        // The redelivery places it, once.
        let outcome = process(&system, &event("paused", "Rust service", "500")).await;
        assert!(matches!(outcome, Outcome::Placed { .. }), "{outcome:?}");
        assert_eq!(stack.bids(&k).len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_claim_superseded_at_record_time_writes_nothing_and_the_rival_records_the_same_bid() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.real_ports(&settings).await;
        let hooked = LedgerPorts {
            ledger: Arc::new(Hooked {
                inner: ledger.ledger.clone(),
                hook: BeforeFinish::RivalClaim,
                armed: AtomicBool::new(true),
            }),
            reports: ledger.reports.clone(),
        };
        let system = stack.system(&settings, Some(hooked), None).await;
        let k = key("superseded");
        let outcome = process(&system, &event("superseded", "Rust service", "500")).await;
        assert!(matches!(outcome, Outcome::Superseded), "{outcome:?}");
        let entry = row(&*ledger.ledger, &k).await;
        assert_eq!(entry.state, LedgerState::Pending, "the superseded holder wrote nothing");
        let first = stack.bids(&k);
        assert_eq!(first.len(), 1);
        // The next attempt replays the stored request and records the same bid.
        let outcome = process(&system, &event("superseded", "Rust service", "500")).await;
        assert!(
            matches!(&outcome, Outcome::Placed { via: PlacedVia::Replay, bid_id: Some(id) } if *id == first[0]),
            "{outcome:?}"
        );
        assert_eq!(stack.bids(&k), first, "still the one bid");
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_lock_store_fails_closed_without_a_call() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let mut proxy = TcpProxy::start(&host_port(&support::redis_url(), 6379)).await;
        let settings = stack.settings(&[
            ("REDIS_URL", proxy.url_for(&support::redis_url())),
            ("BIDORCH__BIDDING__MIN_BUDGET", "200".to_owned()),
        ]);
        let system = stack.system(&settings, None, None).await;
        proxy.cut().await;
        let k = key("no-redis");
        let outcome = process(&system, &event("no-redis", "Rust service", "500")).await;
        assert!(
            matches!(
                outcome,
                Outcome::Unavailable {
                    component: Component::LockStore,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(stack.requests(&k), 0, "no call without a lease");
        proxy.restore().await;
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_ledger_fails_closed_before_and_after_the_call() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let upstream = host_port(&support::database_url(), 5432);
        // Before anything: the lookup cannot answer, nothing is called.
        let mut proxy = TcpProxy::start(&upstream).await;
        let via_proxy = |proxy: &TcpProxy| {
            let mut o = rules();
            o.push(("DATABASE_URL", proxy.url_for(&support::database_url())));
            o
        };
        let settings = stack.settings(&via_proxy(&proxy));
        let system = stack.system(&settings, None, None).await;
        proxy.cut().await;
        let k = key("no-pg");
        let outcome = process(&system, &event("no-pg", "Rust service", "500")).await;
        assert!(
            matches!(
                outcome,
                Outcome::Unavailable {
                    component: Component::Ledger,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(stack.requests(&k), 0);
        drop(system);

        // Between the call and the record: the bid exists, the row stays pending, and the
        // redelivery records the same bid.
        let proxy = TcpProxy::start(&upstream).await;
        let settings = stack.settings(&via_proxy(&proxy));
        let (ledger, _) = stack.real_ports(&settings).await;
        let hooked = LedgerPorts {
            ledger: Arc::new(Hooked {
                inner: ledger.ledger,
                hook: BeforeFinish::Cut(tokio::sync::Mutex::new(proxy)),
                armed: AtomicBool::new(true),
            }),
            reports: ledger.reports,
        };
        let system = stack.system(&settings, Some(hooked), None).await;
        let k = key("pg-lost-after-call");
        let outcome = process(&system, &event("pg-lost-after-call", "Rust service", "500")).await;
        assert!(
            matches!(
                outcome,
                Outcome::Unavailable {
                    component: Component::Ledger,
                    ..
                }
            ),
            "{outcome:?}"
        );
        let first = stack.bids(&k);
        assert_eq!(first.len(), 1);
        let direct = stack.settings(&rules());
        let system = stack.system(&direct, None, None).await;
        let outcome = process(&system, &event("pg-lost-after-call", "Rust service", "500")).await;
        assert!(
            matches!(&outcome, Outcome::Placed { bid_id: Some(id), .. } if *id == first[0]),
            "{outcome:?}"
        );
        assert_eq!(stack.bids(&k), first);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Sticky requests: the answer is lost, then the policy would say no.

/// Attempt 1 places the bid and loses the answer; `change` makes the policy say no to the
/// retry (`second` is the retry's event); the retry must end `placed` with the first bid's id.
async fn lost_answer_then(
    stack: Arc<Stack>,
    posting_id: &'static str,
    overrides: Vec<(&'static str, String)>,
    retry_overrides: Vec<(&'static str, String)>,
    second: Vec<u8>,
    before_retry: impl Future<Output = ()>,
) {
    let k = key(posting_id);
    let settings = stack.settings(&overrides);
    let (ledger, _) = stack.real_ports(&settings).await;
    let system = stack.system(&settings, Some(ledger.clone()), None).await;
    stack.sandbox.lose_next_responses(1);
    let outcome = process(&system, &event(posting_id, "Rust service", "500")).await;
    assert!(matches!(outcome, Outcome::Transient { .. }), "{outcome:?}");
    let sent = row(&*ledger.ledger, &k).await;
    assert_eq!((sent.state, sent.sends), (LedgerState::Pending, 1));
    let first = stack.bids(&k);
    assert_eq!(first.len(), 1, "the first attempt created the bid");
    before_retry.await;

    let retry_settings = stack.settings(&retry_overrides);
    let retry = stack
        .system(&retry_settings, Some(ledger.clone()), None)
        .await;
    let outcome = process(&retry, &second).await;
    assert!(
        matches!(&outcome, Outcome::Placed { bid_id: Some(id), .. } if *id == first[0]),
        "the retry re-sends the stored request and records the first bid: {outcome:?}"
    );
    let entry = row(&*ledger.ledger, &k).await;
    assert_eq!(entry.state, LedgerState::Placed);
    assert_eq!(entry.bid_id.as_deref(), Some(first[0].as_str()));
    assert_eq!(stack.bids(&k), first, "one bid at the marketplace");
    let stats = stack.sandbox.stats();
    assert_eq!(stats.duplicates, Vec::<String>::new());
    assert_eq!(
        stats.rejected, 0,
        "the replay carried the same body (no 422)"
    );
}

#[tokio::test]
async fn a_lost_answer_then_a_lower_budget_still_ends_placed_with_the_first_bid() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let second = event("lower", "Rust service", "150");
        lost_answer_then(stack, "lower", rules(), rules(), second, async {}).await;
    })
    .await;
}

#[tokio::test]
async fn a_lost_answer_then_a_blocked_keyword_still_ends_placed_with_the_first_bid() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let second = event("blocked", "Rust service for a crypto exchange", "500");
        lost_answer_then(stack, "blocked", rules(), rules(), second, async {}).await;
    })
    .await;
}

#[tokio::test]
async fn a_lost_answer_then_a_config_change_still_ends_placed_with_the_first_bid() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let stricter = vec![
            ("BIDORCH__BIDDING__MIN_BUDGET", "10000".to_owned()),
            ("BIDORCH__BIDDING__BLOCKED_KEYWORDS", "rust".to_owned()),
        ];
        let second = event("config", "Rust service", "500");
        lost_answer_then(stack, "config", rules(), stricter, second, async {}).await;
    })
    .await;
}

#[tokio::test]
async fn a_lost_answer_then_a_full_daily_cap_still_ends_placed_with_the_first_bid() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let mut capped = rules();
        capped.push(("BIDORCH__BIDDING__DAILY_BID_CAP", "1".to_owned()));
        let settings = stack.settings(&capped);
        let other = stack.clone();
        // The cap fills while the first posting waits: another posting meets it.
        let fill = async move {
            let system = other.system(&settings, None, None).await;
            let outcome = process(&system, &event("cap-other", "Rust service", "500")).await;
            let Outcome::Skipped { reasons } = outcome else {
                panic!("the cap is full: expected Skipped, got {outcome:?}");
            };
            assert!(
                reasons.iter().any(|r| r.contains("daily_cap")),
                "{reasons:?}"
            );
        };
        let second = event("cap", "Rust service", "500");
        lost_answer_then(stack, "cap", capped.clone(), capped, second, fill).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// `bidorch reconcile` and `bidorch inspect`, as an operator runs them.

fn bidorch(stack: &Stack, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bidorch"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(stack.env(&rules()));
    cmd
}

/// Runs a `bidorch` command to its end, off the runtime (which serves the test's sandbox).
async fn run(stack: &Stack, args: &[&str]) -> Output {
    let mut cmd = bidorch(stack, args);
    tokio::task::spawn_blocking(move || cmd.output().expect("bidorch runs"))
        .await
        .expect("join")
}

/// `n` postings whose bid was placed but whose answer was lost: pending with a send.
async fn unresolved_sends(stack: &Stack, system: &System, n: usize) -> Vec<PostingKey> {
    let mut keys = Vec::new();
    for i in 0..n {
        let id = format!("unresolved-{i}");
        stack.sandbox.lose_next_responses(1);
        let outcome = process(system, &event(&id, "Rust service", "500")).await;
        assert!(matches!(outcome, Outcome::Transient { .. }), "{outcome:?}");
        keys.push(key(&id));
        // A healthy answer in between, or the streak of 502s would pause the marketplace.
        let healthy = process(
            system,
            &event(&format!("healthy-{i}"), "Rust service", "500"),
        )
        .await;
        assert!(matches!(healthy, Outcome::Placed { .. }), "{healthy:?}");
    }
    keys
}

#[tokio::test]
async fn reconcile_dry_run_changes_nothing_and_a_real_run_settles_every_unresolved_send() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.real_ports(&settings).await;
        let system = stack.system(&settings, Some(ledger.clone()), None).await;
        let keys = unresolved_sends(&stack, &system, 3).await;
        let before: Vec<LedgerEntry> = futures_rows(&*ledger.ledger, &keys).await;
        let requests = stack.sandbox.stats().requests;

        // Without any marketplace token: a dry run sends nothing, so it needs none.
        let mut dry = bidorch(&stack, &["reconcile", "--dry-run", "--older-than", "0s"]);
        dry.env_remove("BIDORCH_UPWORK_TOKEN")
            .env_remove("BIDORCH_FREELANCER_TOKEN");
        let dry = tokio::task::spawn_blocking(move || dry.output().expect("bidorch runs"))
            .await
            .expect("join");
        assert!(dry.status.success(), "{dry:?}");
        let out = String::from_utf8_lossy(&dry.stdout);
        assert!(out.contains("3 unresolved send(s)"), "{out}");
        assert!(
            out.contains("not checked: the marketplaces' credentials"),
            "{out}"
        );
        for k in &keys {
            assert!(out.contains(&k.to_string()), "the dry run lists {k}: {out}");
        }
        assert_eq!(
            futures_rows(&*ledger.ledger, &keys).await,
            before,
            "--dry-run changed nothing"
        );
        assert_eq!(
            stack.sandbox.stats().requests,
            requests,
            "--dry-run sent nothing"
        );

        let real = run(&stack, &["reconcile", "--older-than", "0s", "--quiet"]).await;
        assert!(real.status.success(), "{real:?}");
        let out = String::from_utf8_lossy(&real.stdout);
        assert!(out.contains("settled 3 posting(s): placed 3"), "{out}");
        for k in &keys {
            let entry = row(&*ledger.ledger, k).await;
            assert_eq!(entry.state, LedgerState::Placed, "{k}");
            assert_eq!(stack.bids(k).len(), 1, "{k}: one bid");
            assert_eq!(entry.bid_id.as_deref(), Some(stack.bids(k)[0].as_str()));
        }
        let again = run(&stack, &["reconcile", "--older-than", "0s"]).await;
        assert!(String::from_utf8_lossy(&again.stdout).contains("0 unresolved send(s)"));
    })
    .await;
}

async fn futures_rows(ledger: &dyn BidLedger, keys: &[PostingKey]) -> Vec<LedgerEntry> {
    let mut rows = Vec::new();
    for k in keys {
        rows.push(row(ledger, k).await);
    }
    rows
}

#[tokio::test]
async fn two_concurrent_reconciles_and_a_running_fleet_never_bid_twice() {
    // The replays are answered with the first bid's id (the contract); the lease keeps the
    // three apart and the fence keeps a superseded one from writing.
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.real_ports(&settings).await;
        let system = stack.system(&settings, Some(ledger.clone()), None).await;
        let keys = unresolved_sends(&stack, &system, 12).await;
        let first: Vec<Vec<String>> = keys.iter().map(|k| stack.bids(k)).collect();
        let mut reconcilers: Vec<std::process::Child> = (0..2)
            .map(|_| {
                bidorch(&stack, &["reconcile", "--older-than", "0s", "--quiet"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("bidorch reconcile starts")
            })
            .collect();
        // The fleet meanwhile gets the redeliveries of the same postings.
        for (i, _) in keys.iter().enumerate() {
            let id = format!("unresolved-{i}");
            let _ = process(&system, &event(&id, "Rust service", "500")).await;
        }
        let statuses = tokio::task::spawn_blocking(move || {
            reconcilers
                .iter_mut()
                .map(|c| c.wait().expect("reconcile exits"))
                .collect::<Vec<_>>()
        })
        .await
        .expect("join");
        // A reconcile that met a held lease says so (exit 1) and leaves it to the holder.
        for status in &statuses {
            assert!(status.code().is_some(), "{status:?}");
        }
        // Whatever is left waiting, one more pass settles.
        for (i, k) in keys.iter().enumerate() {
            if row(&*ledger.ledger, k).await.state == LedgerState::Pending {
                let id = format!("unresolved-{i}");
                let _ = process(&system, &event(&id, "Rust service", "500")).await;
            }
            let entry = row(&*ledger.ledger, k).await;
            assert_eq!(entry.state, LedgerState::Placed, "{k}");
            assert_eq!(stack.bids(k), first[i], "{k}: still the first and only bid");
            assert_eq!(entry.bid_id.as_deref(), Some(first[i][0].as_str()));
        }
        assert!(stack.sandbox.stats().duplicates.is_empty());
    })
    .await;
}

/// The layers in front of the idempotency key — ledger, lease, fence — alone keep duplicates
/// from bidding twice: the sandbox here creates a bid for every request it gets.
#[tokio::test]
async fn concurrent_duplicates_on_two_workers_bid_once_even_without_idempotency() {
    let naive = SandboxOptions {
        honour_idempotency: false,
        ..SandboxOptions::default()
    };
    with_stack(naive, |stack| async move {
        let settings = stack.settings(&rules());
        let a = Arc::new(stack.system(&settings, None, None).await);
        let b = Arc::new(stack.system(&settings, None, None).await);
        let mut copies = tokio::task::JoinSet::new();
        for i in 0..16 {
            let system = if i % 2 == 0 { a.clone() } else { b.clone() };
            copies.spawn(async move {
                let id = format!("race-{}", i % 4);
                process(&system, &event(&id, "Rust service", "500")).await
            });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = copies.join_next().await {
            outcomes.push(done.expect("join"));
        }
        // Copies that met a held lease come back later, as the broker would bring them.
        for i in 0..4 {
            let id = format!("race-{i}");
            let again = process(&a, &event(&id, "Rust service", "500")).await;
            assert!(
                matches!(again, Outcome::Duplicate(LedgerState::Placed)),
                "{id}: {again:?} after {outcomes:?}"
            );
            assert_eq!(stack.bids(&key(&id)).len(), 1, "{id}: one bid");
        }
        assert!(stack.sandbox.stats().duplicates.is_empty());
    })
    .await;
}

#[tokio::test]
async fn inspect_tells_a_placed_a_skipped_and_a_pending_postings_story() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let system = stack.system(&settings, None, None).await;
        process(&system, &event("told-placed", "Rust service", "500")).await;
        process(&system, &event("told-skipped", "A crypto bot", "500")).await;
        stack.sandbox.lose_next_responses(1);
        process(&system, &event("told-pending", "Rust service", "500")).await;

        let stack2 = stack.clone();
        let story = |id: &'static str| {
            let stack = stack2.clone();
            async move {
                let key = format!("upwork:{id}");
                let out = run(&stack, &["inspect", &key, "--json"]).await;
                assert!(out.status.success(), "{out:?}");
                serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("one JSON object")
            }
        };
        let placed = story("told-placed").await;
        assert_eq!(placed["state"], "placed");
        assert_eq!(placed["sends"], 1);
        assert!(placed["epoch"].as_i64().unwrap_or(0) >= 1);
        let bid = stack.bids(&key("told-placed"));
        assert_eq!(placed["bid_id"], bid[0].as_str());
        assert_eq!(placed["request"]["currency"], "USD");
        let attempts = placed["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0]["http_status"], 201);

        let skipped = story("told-skipped").await;
        assert_eq!(skipped["state"], "skipped");
        assert_eq!(skipped["sends"], 0);
        assert!(
            skipped["detail"]
                .as_str()
                .unwrap_or("")
                .contains("blocked_keyword")
        );
        assert!(skipped["request"].is_null());

        let pending = story("told-pending").await;
        assert_eq!(pending["state"], "pending");
        assert_eq!(pending["sends"], 1);
        assert!(
            pending["request"]["sha256"]
                .as_str()
                .is_some_and(|s| s.len() == 64)
        );
        assert_eq!(pending["attempts"][0]["http_status"], 502);

        let text = run(&stack, &["inspect", "upwork:told-placed"]).await;
        assert!(String::from_utf8_lossy(&text.stdout).contains("placed"));

        let unknown = run(&stack, &["inspect", "upwork:never-seen"]).await;
        assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
        assert!(String::from_utf8_lossy(&unknown.stderr).contains("no such posting"));

        let malformed = run(&stack, &["inspect", "no-colon-here"]).await;
        assert_eq!(
            malformed.status.code(),
            Some(2),
            "a usage error: {malformed:?}"
        );
        assert!(String::from_utf8_lossy(&malformed.stderr).contains("MARKETPLACE:POSTING_ID"));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The remote scoring service (the sandbox's stand-in at /v1/score) over real HTTP.

fn scored(stack: &Stack, on_failure: &str) -> Vec<(&'static str, String)> {
    let mut o = rules();
    o.push((
        "BIDORCH__SCORING__URL",
        format!("{}/v1/score", stack.sandbox_url),
    ));
    o.push(("BIDORCH__SCORING__THRESHOLD", "0.5".to_owned()));
    o.push(("BIDORCH__SCORING__ON_FAILURE", on_failure.to_owned()));
    o
}

#[tokio::test]
async fn a_low_score_skips_with_its_reason_and_a_high_one_bids() {
    with_stack(SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&scored(&stack, "wait"));
        let (ledger, _) = stack.real_ports(&settings).await;
        let system = stack.system(&settings, Some(ledger.clone()), None).await;
        let high = process(&system, &event("scored-high", "Rust service", "500")).await;
        assert!(matches!(high, Outcome::Placed { .. }), "{high:?}");
        let low = process(
            &system,
            &event("scored-low", "low-score Rust service", "500"),
        )
        .await;
        let Outcome::Skipped { reasons } = low else {
            panic!("expected Skipped, got {low:?}");
        };
        assert!(
            reasons[0].starts_with("score_below_threshold"),
            "{reasons:?}"
        );
        assert_eq!(stack.sandbox.scored(), 2);
        assert_eq!(stack.requests(&key("scored-low")), 0);
        // The rules come first: a posting they skip is never scored.
        process(&system, &event("scored-cheap", "Rust service", "150")).await;
        assert_eq!(stack.sandbox.scored(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_scoring_outage_waits_skips_or_falls_back_to_the_rules_as_configured() {
    with_stack(SandboxOptions::default(), |stack| async move {
        stack.sandbox.set_scoring_down(true);
        let (ledger, _) = stack.real_ports(&stack.settings(&rules())).await;

        let wait = stack
            .system(
                &stack.settings(&scored(&stack, "wait")),
                Some(ledger.clone()),
                None,
            )
            .await;
        let outcome = process(&wait, &event("score-wait", "Rust service", "500")).await;
        assert!(
            matches!(
                outcome,
                Outcome::Unavailable {
                    component: Component::Scoring,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert!(
            ledger
                .ledger
                .lookup(&key("score-wait"))
                .await
                .unwrap()
                .is_none(),
            "nothing recorded"
        );

        let skip = stack
            .system(
                &stack.settings(&scored(&stack, "skip")),
                Some(ledger.clone()),
                None,
            )
            .await;
        let outcome = process(&skip, &event("score-skip", "Rust service", "500")).await;
        assert!(
            matches!(&outcome, Outcome::Skipped { reasons } if reasons == &["scoring_unavailable"]),
            "{outcome:?}"
        );

        let rules_only = stack
            .system(
                &stack.settings(&scored(&stack, "rules")),
                Some(ledger.clone()),
                None,
            )
            .await;
        let outcome = process(&rules_only, &event("score-rules", "Rust service", "500")).await;
        assert!(matches!(outcome, Outcome::Placed { .. }), "{outcome:?}");

        // Back up: the waiting posting is scored and bid.
        stack.sandbox.set_scoring_down(false);
        let outcome = process(&wait, &event("score-wait", "Rust service", "500")).await;
        assert!(matches!(outcome, Outcome::Placed { .. }), "{outcome:?}");
    })
    .await;
}
