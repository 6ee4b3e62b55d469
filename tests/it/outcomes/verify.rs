//! Verify before resend, through the pipeline, on a marketplace speaking the Freelancer API (no
//! idempotency keys): a send whose answer was lost is looked up before anything else happens to
//! the posting. The sandbox creates a second bid when asked for one (`refuse_second_bid: false`)
//! wherever a test is about never sending twice, so any lapse shows as a duplicate.
use std::sync::Arc;
use std::time::Duration;

use bidorch::app::System;
use bidorch::ledger::LedgerState;
use bidorch::marketplace::Marketplace;
use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::pipeline::{Component, Outcome, PlacedVia};

use super::*;
use crate::support::system::{Backend, TestSystem, with_system};

/// A posting on the marketplace that speaks the Freelancer API.
fn fl_key(project: &str) -> PostingKey {
    support::key("freelancer", project)
}

fn fl_event(project: &str) -> Vec<u8> {
    support::event(serde_json::json!({
        "marketplace": "freelancer",
        "posting_id": project,
        "title": "Rust service",
        "budget": {"min": "100", "max": "500", "kind": null},
    }))
}

/// The bidding rules, `freelancer` on its API, and `lookup_delay` if given (else the default).
fn fl_settings(lookup_delay: Option<&str>) -> Vec<(&'static str, String)> {
    let mut settings = rules();
    settings.push((
        "BIDORCH__MARKETPLACES__FREELANCER__API",
        "freelancer".to_owned(),
    ));
    if let Some(delay) = lookup_delay {
        settings.push((
            "BIDORCH__MARKETPLACES__FREELANCER__LOOKUP_DELAY",
            delay.to_owned(),
        ));
    }
    settings
}

/// A sandbox that creates every bid it is sent, a second one included.
fn naive() -> SandboxOptions {
    SandboxOptions {
        refuse_second_bid: false,
        ..SandboxOptions::default()
    }
}

/// Processes `body` as a redelivery: the posting may have been seen before, so the ledger is
/// read first.
async fn redeliver(system: &System, body: &[u8]) -> Outcome {
    let pipeline = system.pipeline();
    let posting = pipeline.parse(body).expect("the test event is valid");
    let context = AttemptContext {
        event_id: posting.event_id.clone(),
        seen_before: true,
        ..AttemptContext::default()
    };
    pipeline.process(&posting, &context).await
}

/// Redelivers `body` as the queue would: again after each `lookup_wait`, for what it says.
async fn settle(system: &System, body: &[u8]) -> Outcome {
    for _ in 0..20 {
        match redeliver(system, body).await {
            Outcome::LookupWait { retry_in } => tokio::time::sleep(retry_in).await,
            outcome => return outcome,
        }
    }
    panic!("the lookup never became due");
}

/// A system with `freelancer` on its API; its ledger ports too.
async fn fl_system(
    stack: &TestSystem,
    lookup_delay: Option<&str>,
) -> (System, bidorch::app::LedgerPorts) {
    let settings = stack.settings(&fl_settings(lookup_delay));
    let (ledger, _) = stack.ports(&settings).await;
    let system = stack.system(&settings, Some(ledger.clone()), None).await;
    (system, ledger)
}

/// The attempts' claims, results and send states, in order.
async fn history(ledger: &bidorch::app::LedgerPorts, key: &PostingKey) -> Vec<String> {
    ledger
        .reports
        .attempts(key)
        .await
        .expect("the history reads")
        .into_iter()
        .map(|a| {
            format!(
                "{}:{}:{}",
                a.claim,
                a.result.unwrap_or_default(),
                a.send.unwrap_or_default()
            )
        })
        .collect()
}

async fn a_lost_answer_is_looked_up_and_placed_without_a_second_send(backend: Backend) {
    with_system(backend, naive(), |stack| async move {
        let k = fl_key("1001");
        // Defaults first: the retry right after the loss waits for `lookup_delay`, unclaimed.
        let (system, ledger) = fl_system(&stack, None).await;
        stack.sandbox.lose_next_responses(1);
        let outcome = process(&system, &fl_event("1001")).await;
        assert!(matches!(outcome, Outcome::Transient { .. }), "{outcome:?}");
        let lost = row(&*ledger.ledger, &k).await;
        assert!(lost.unknown_since.is_some(), "the send's fate is unknown");
        let created = stack.bids(&k);
        assert_eq!(created.len(), 1, "the lost answer's bid exists");
        let outcome = redeliver(&system, &fl_event("1001")).await;
        let Outcome::LookupWait { retry_in } = outcome else {
            panic!("a lookup is due only lookup_delay after the send: {outcome:?}");
        };
        assert!(retry_in <= Duration::from_secs(10), "twice the 5 s timeout: {retry_in:?}");
        assert_eq!(
            row(&*ledger.ledger, &k).await.epoch,
            lost.epoch,
            "a wait claims nothing"
        );

        let (system, _) = fl_system(&stack, Some("200ms")).await;
        let outcome = settle(&system, &fl_event("1001")).await;
        assert!(
            matches!(&outcome, Outcome::Placed { bid_id: Some(id), via: PlacedVia::Lookup } if *id == created[0]),
            "{outcome:?}"
        );
        let entry = row(&*ledger.ledger, &k).await;
        assert_eq!(entry.state, LedgerState::Placed);
        assert_eq!(entry.bid_id.as_deref(), Some(created[0].as_str()));
        assert_eq!(entry.sends, 1, "nothing was sent again");
        assert_eq!(stack.requests(&k), 1, "one bid request in all");
        assert_eq!(stack.bids(&k), created);
        assert_eq!(stack.sandbox.stats().postings[&k.to_string()].lookups, 1);
        let story = history(&ledger, &k).await;
        assert_eq!(story.first().map(String::as_str), Some("send:transient:unknown"));
        assert_eq!(story.last().map(String::as_str), Some("lookup:found:"));
        let attempts = ledger.reports.attempts(&k).await.expect("the history reads");
        assert_eq!(
            attempts.last().and_then(|a| a.detail.clone()),
            Some(format!("bid {}", created[0])),
            "inspect shows the bid the lookup found"
        );
    })
    .await;
}

async fn a_send_that_never_landed_is_looked_up_then_sent_again_once(backend: Backend) {
    with_system(backend, naive(), |stack| async move {
        let k = fl_key("1002");
        let (system, ledger) = fl_system(&stack, Some("200ms")).await;
        // A 503 may hide a bid, as far as the worker knows: unknown.
        stack
            .sandbox
            .fail_next(bidorch::marketplace::sandbox::Fault::unavailable());
        let outcome = process(&system, &fl_event("1002")).await;
        assert!(matches!(outcome, Outcome::Transient { .. }), "{outcome:?}");
        assert!(stack.bids(&k).is_empty());
        let outcome = settle(&system, &fl_event("1002")).await;
        assert!(
            matches!(
                outcome,
                Outcome::Placed {
                    via: PlacedVia::New,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(stack.bids(&k).len(), 1);
        assert_eq!(stack.requests(&k), 2, "the failed send and one resend");
        assert_eq!(stack.sandbox.stats().duplicates, Vec::<String>::new());
        assert_eq!(
            history(&ledger, &k).await,
            [
                "send:transient:absent",
                "lookup:no_bid_found:",
                "resend:placed:answered"
            ]
        );
        let entry = row(&*ledger.ledger, &k).await;
        assert_eq!((entry.sends, entry.unknown_since), (2, None));
    })
    .await;
}

async fn a_send_that_provably_created_nothing_is_sent_again_without_a_lookup(backend: Backend) {
    with_system(backend, naive(), |stack| async move {
        let k = fl_key("1003");
        let (system, ledger) = fl_system(&stack, None).await;
        // A 429 proves nothing was created: no lookup, no lookup_delay.
        stack
            .sandbox
            .fail_next(bidorch::marketplace::sandbox::Fault::rate_limited("0"));
        let outcome = process(&system, &fl_event("1003")).await;
        assert!(matches!(outcome, Outcome::Transient { .. }), "{outcome:?}");
        assert_eq!(row(&*ledger.ledger, &k).await.unknown_since, None);
        // Another worker (this one's breaker holds the marketplace back for the 429's second).
        let (system, _) = fl_system(&stack, None).await;
        let outcome = redeliver(&system, &fl_event("1003")).await;
        assert!(
            matches!(
                outcome,
                Outcome::Placed {
                    via: PlacedVia::New,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(stack.sandbox.stats().lookups, 0);
        assert_eq!(stack.bids(&k).len(), 1);
    })
    .await;
}

async fn a_refusal_of_a_second_bid_is_looked_up_and_placed_never_rejected(backend: Backend) {
    // As Freelancer does: one bid per bidder per project.
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let k = fl_key("1004");
        let (system, ledger) = fl_system(&stack, None).await;
        // A sender frozen past lookup_delay wakes and lands its request first: the worker's own
        // send is refused as a second bid.
        let client = stack_client(&stack);
        let stored = client
            .request_for(&k, &terms())
            .await
            .expect("configured")
            .expect("a project id");
        let landed = client.place_bid(&bid_of(&k, &stored)).await.expect("sent");
        let bidorch::marketplace::BidResult::Placed { bid_id, .. } = landed else {
            panic!("the late request placed the bid: {landed:?}");
        };
        let outcome = process(&system, &fl_event("1004")).await;
        assert!(
            matches!(&outcome, Outcome::Placed { bid_id: Some(id), via: PlacedVia::Lookup } if *id == bid_id),
            "{outcome:?}"
        );
        let entry = row(&*ledger.ledger, &k).await;
        assert_eq!(entry.state, LedgerState::Placed);
        assert_eq!(stack.bids(&k), [bid_id]);
        assert_eq!(stack.sandbox.stats().conflicts, 1, "the second bid was refused");
    })
    .await;
}

async fn a_lookup_that_cannot_answer_waits_and_never_counts(backend: Backend) {
    with_system(backend, naive(), |stack| async move {
        let k = fl_key("1005");
        let (system, ledger) = fl_system(&stack, Some("200ms")).await;
        stack.sandbox.lose_next_responses(1);
        process(&system, &fl_event("1005")).await;
        let created = stack.bids(&k);
        stack
            .sandbox
            .set_outage(Some(bidorch::marketplace::sandbox::Fault::unavailable()));
        let outcome = settle(&system, &fl_event("1005")).await;
        assert!(
            matches!(
                outcome,
                Outcome::Unavailable {
                    component: Component::Marketplace,
                    ..
                } | Outcome::MarketplacePaused { .. }
            ),
            "{outcome:?}"
        );
        let action = outcome.action(
            &bidorch::pipeline::Envelope {
                attempt: 99,
                age: Duration::from_secs(60),
            },
            &retry_rules(),
        );
        assert!(
            matches!(action, bidorch::pipeline::Action::Retry { counts: false, .. }),
            "{action:?}"
        );
        assert_eq!(row(&*ledger.ledger, &k).await.state, LedgerState::Pending);
        stack.sandbox.set_outage(None);
        // A fresh worker (the paused breaker is per process) settles it once the API answers.
        let (system, _) = fl_system(&stack, Some("200ms")).await;
        let outcome = settle(&system, &fl_event("1005")).await;
        assert!(
            matches!(&outcome, Outcome::Placed { bid_id: Some(id), via: PlacedVia::Lookup } if *id == created[0]),
            "{outcome:?}"
        );
        assert_eq!(stack.bids(&k), created, "never a second bid");
    })
    .await;
}

async fn a_project_gone_at_lookup_is_rejected(backend: Backend) {
    with_system(backend, naive(), |stack| async move {
        let (system, ledger) = fl_system(&stack, Some("200ms")).await;
        // The marketplace is known to answer: a 404 is about the project, not the base_url.
        let outcome = process(&system, &fl_event("1100")).await;
        assert!(matches!(outcome, Outcome::Placed { .. }), "{outcome:?}");
        let k = fl_key("1006");
        stack
            .sandbox
            .fail_next(bidorch::marketplace::sandbox::Fault::unavailable());
        process(&system, &fl_event("1006")).await;
        stack.sandbox.close_project(&k);
        let outcome = settle(&system, &fl_event("1006")).await;
        assert!(
            matches!(outcome, Outcome::Rejected { status: 404 }),
            "{outcome:?}"
        );
        assert_eq!(row(&*ledger.ledger, &k).await.state, LedgerState::Rejected);
        assert!(stack.bids(&k).is_empty());
    })
    .await;
}

async fn a_posting_id_that_is_no_project_id_is_skipped_without_a_call(backend: Backend) {
    with_system(backend, naive(), |stack| async move {
        let (system, ledger) = fl_system(&stack, None).await;
        let outcome = process(&system, &fl_event("job_7")).await;
        let Outcome::Skipped { reasons } = outcome else {
            panic!("expected a skip: {outcome:?}");
        };
        assert_eq!(reasons, ["posting_id_unsupported"]);
        let k = fl_key("job_7");
        assert_eq!(row(&*ledger.ledger, &k).await.state, LedgerState::Skipped);
        assert_eq!(stack.sandbox.stats().requests, 0);
    })
    .await;
}

crate::on_both_backends!(
    a_lost_answer_is_looked_up_and_placed_without_a_second_send,
    a_send_that_never_landed_is_looked_up_then_sent_again_once,
    a_send_that_provably_created_nothing_is_sent_again_without_a_lookup,
    a_refusal_of_a_second_bid_is_looked_up_and_placed_never_rejected,
    a_lookup_that_cannot_answer_waits_and_never_counts,
    a_project_gone_at_lookup_is_rejected,
    a_posting_id_that_is_no_project_id_is_skipped_without_a_call,
);

/// The marketplace client a worker of `stack` would build, `freelancer` on its API.
fn stack_client(stack: &Arc<TestSystem>) -> bidorch::marketplace::HttpMarketplace {
    let settings = stack.settings(&fl_settings(None));
    bidorch::marketplace::HttpMarketplace::new(&settings.marketplaces, settings.lock.ttl, |_| {
        Some(crate::support::system::TOKEN.to_owned())
    })
    .expect("valid marketplaces")
}

fn terms() -> bidorch::marketplace::BidTerms {
    bidorch::marketplace::BidTerms {
        amount: rust_decimal::Decimal::new(45000, 2),
        currency: "USD".to_owned(),
        cover_letter: "Hello".to_owned(),
    }
}

fn bid_of(
    key: &PostingKey,
    stored: &bidorch::ledger::StoredRequest,
) -> bidorch::marketplace::BidRequest {
    bidorch::marketplace::BidRequest {
        key: key.clone(),
        api: stored.api.clone(),
        body: stored.body.clone(),
        trace_headers: Default::default(),
    }
}

fn retry_rules() -> bidorch::pipeline::RetryRules {
    bidorch::pipeline::RetryRules {
        lock_held: Duration::from_millis(200),
        unavailable: Duration::from_secs(1),
        transient: Duration::from_millis(200),
        max_attempts: 5,
        retry_budget: Duration::from_secs(86_400),
    }
}
