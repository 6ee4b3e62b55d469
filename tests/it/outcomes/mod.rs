//! Every row of the outcome table produced from its *situation*, through the pipeline, on both
//! backends ([`on_both_backends!`](crate::on_both_backends)): the embedded one, which runs where
//! no service does, and the real one (PostgreSQL, Redis, the sandbox over HTTP). Faults come from
//! thin wrappers around the real ports — a holder paused past its TTL, a rival's claim between
//! the call and the record — or, on the real backend, a TCP proxy cut in front of Redis or
//! PostgreSQL; never from a port that returns a made-up error.
//!
//! - `table.rs`: one test per row of the table.
//! - `faults.rs`: unreachable Redis and PostgreSQL (real backend: a cut proxy).
//! - `sticky.rs`: the answer is lost, then the policy would say no — still one bid, placed.
//! - `scoring.rs`: the remote scoring service's verdicts and outage.
//! - `verify.rs`: verify before resend on the Freelancer API (no idempotency keys): lookups of
//!   lost answers, refusals of a second bid, lookups without an answer, gone projects.
//! - `commands.rs`: `bidorch reconcile` and `bidorch inspect` as an operator runs them, and two
//!   workers racing on duplicates (real backend: several processes share it).

mod commands;
mod faults;
mod scoring;
mod sticky;
mod table;
mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use bidorch::app::System;
use bidorch::ledger::{
    BidLedger, Claim, ClaimRequest, Fenced, Finish, Intent, LedgerEntry, LedgerError,
};
use bidorch::lock::{HolderInfo, Lease, LockError, LockStore, Release};
use bidorch::pipeline::{AttemptContext, Outcome};
use bidorch::posting::PostingKey;

use crate::support;
use crate::support::proxy::TcpProxy;

/// A posting key on `upwork`.
fn key(posting_id: &str) -> PostingKey {
    support::key("upwork", posting_id)
}

/// An event for `posting_id` with this title and maximum budget (USD).
fn event(posting_id: &str, title: &str, max_budget: &str) -> Vec<u8> {
    support::event(serde_json::json!({
        "posting_id": posting_id,
        "title": title,
        "description": "Build a small service.",
        "skills": ["rust"],
        "budget": {"min": "100", "max": max_budget, "kind": null},
        "client": {"payment_verified": true, "rating": 4.8, "country": "DE"},
    }))
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
    async fn claim(&self, claim: ClaimRequest) -> Result<Claim, LedgerError> {
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
                        verify: false,
                        budget: None,
                    };
                    let claimed = self
                        .inner
                        .claim(rival.clone())
                        .await
                        .expect("the rival claims");
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
