//! The outcome table, row by row, on both backends.
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bidorch::app::LedgerPorts;
use bidorch::ledger::LedgerState;
use bidorch::marketplace::sandbox::{Fault, SandboxOptions};
use bidorch::pipeline::{Outcome, PlacedVia};

use super::*;
use crate::support::system::{Backend, with_system};

async fn a_final_row_acks_a_duplicate_without_calling_again(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
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

async fn a_held_lease_is_rechecked_after_retry_lock_held_not_after_the_holders_lease(
    backend: Backend,
) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, locks) = stack.ports(&settings).await;
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

async fn the_policy_saying_no_records_skipped_with_its_reasons(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.ports(&settings).await;
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

async fn a_409_is_recorded_placed_with_the_existing_bid(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.ports(&settings).await;
        let system = stack.system(&settings, Some(ledger.clone()), None).await;
        let k = key("conflict");
        // Someone else (another tool, by hand) already bid under another key.
        let existing: serde_json::Value = support::client()
            .post(format!("{}/upwork/v1/postings/conflict/bids", stack.sandbox_url))
            .bearer_auth(crate::support::system::TOKEN)
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

async fn a_422_is_recorded_rejected_with_its_status(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.ports(&settings).await;
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

async fn a_refused_token_pauses_the_marketplace_and_never_records_rejected(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.ports(&settings).await;
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

async fn a_503_keeps_the_row_pending_and_counts_as_the_postings_own_failure(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.ports(&settings).await;
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

async fn a_lease_lost_before_the_call_makes_no_call(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, locks) = stack.ports(&settings).await;
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

async fn a_claim_superseded_at_record_time_writes_nothing_and_the_rival_records_the_same_bid(
    backend: Backend,
) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&rules());
        let (ledger, _) = stack.ports(&settings).await;
        let hooked = LedgerPorts {
            ledger: Arc::new(Hooked {
                inner: ledger.ledger.clone(),
                hook: BeforeFinish::RivalClaim,
                armed: AtomicBool::new(true),
            }),
            reports: ledger.reports.clone(),
            controls: ledger.controls.clone(),
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

crate::on_both_backends!(
    a_final_row_acks_a_duplicate_without_calling_again,
    a_held_lease_is_rechecked_after_retry_lock_held_not_after_the_holders_lease,
    the_policy_saying_no_records_skipped_with_its_reasons,
    a_409_is_recorded_placed_with_the_existing_bid,
    a_422_is_recorded_rejected_with_its_status,
    a_refused_token_pauses_the_marketplace_and_never_records_rejected,
    a_503_keeps_the_row_pending_and_counts_as_the_postings_own_failure,
    a_lease_lost_before_the_call_makes_no_call,
    a_claim_superseded_at_record_time_writes_nothing_and_the_rival_records_the_same_bid,
);
