//! Sticky requests: the answer is lost, then the policy would say no. The retry sends the stored
//! request again and ends `placed` with the first bid.
use std::sync::Arc;

use bidorch::ledger::LedgerState;
use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::pipeline::Outcome;

use super::*;
use crate::support::system::{Backend, TestSystem, with_system};

/// Attempt 1 places the bid and loses the answer; `change` makes the policy say no to the
/// retry (`second` is the retry's event); the retry must end `placed` with the first bid's id.
async fn lost_answer_then(
    stack: Arc<TestSystem>,
    posting_id: &'static str,
    overrides: Vec<(&'static str, String)>,
    retry_overrides: Vec<(&'static str, String)>,
    second: Vec<u8>,
    before_retry: impl Future<Output = ()>,
) {
    let k = key(posting_id);
    let settings = stack.settings(&overrides);
    let (ledger, _) = stack.ports(&settings).await;
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

async fn a_lost_answer_then_a_lower_budget_still_ends_placed_with_the_first_bid(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let second = event("lower", "Rust service", "150");
        lost_answer_then(stack, "lower", rules(), rules(), second, async {}).await;
    })
    .await;
}

async fn a_lost_answer_then_a_blocked_keyword_still_ends_placed_with_the_first_bid(
    backend: Backend,
) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let second = event("blocked", "Rust service for a crypto exchange", "500");
        lost_answer_then(stack, "blocked", rules(), rules(), second, async {}).await;
    })
    .await;
}

async fn a_lost_answer_then_a_config_change_still_ends_placed_with_the_first_bid(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let stricter = vec![
            ("BIDORCH__BIDDING__MIN_BUDGET", "10000".to_owned()),
            ("BIDORCH__BIDDING__BLOCKED_KEYWORDS", "rust".to_owned()),
        ];
        let second = event("config", "Rust service", "500");
        lost_answer_then(stack, "config", rules(), stricter, second, async {}).await;
    })
    .await;
}

async fn a_lost_answer_then_a_full_daily_cap_still_ends_placed_with_the_first_bid(
    backend: Backend,
) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
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

crate::on_both_backends!(
    a_lost_answer_then_a_lower_budget_still_ends_placed_with_the_first_bid,
    a_lost_answer_then_a_blocked_keyword_still_ends_placed_with_the_first_bid,
    a_lost_answer_then_a_config_change_still_ends_placed_with_the_first_bid,
    a_lost_answer_then_a_full_daily_cap_still_ends_placed_with_the_first_bid,
);
