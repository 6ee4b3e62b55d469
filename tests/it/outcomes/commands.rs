//! `bidorch reconcile` and `bidorch inspect` as an operator runs them, and two workers racing on
//! duplicates (real backend: several processes and systems share it).
use std::sync::Arc;

use bidorch::ledger::LedgerState;
use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::pipeline::Outcome;

use std::process::{Command, Output};

use super::*;
use crate::support::system::{Backend, TestSystem, with_system};

fn bidorch(stack: &TestSystem, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bidorch"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(stack.env(&rules()));
    cmd
}

/// Runs a `bidorch` command to its end, off the runtime (which serves the test's sandbox).
async fn run(stack: &TestSystem, args: &[&str]) -> Output {
    let mut cmd = bidorch(stack, args);
    tokio::task::spawn_blocking(move || cmd.output().expect("bidorch runs"))
        .await
        .expect("join")
}

/// `n` postings whose bid was placed but whose answer was lost: pending with a send.
async fn unresolved_sends(stack: &TestSystem, system: &System, n: usize) -> Vec<PostingKey> {
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
    with_system(
        Backend::Real,
        SandboxOptions::default(),
        |stack| async move {
            let settings = stack.settings(&rules());
            let (ledger, _) = stack.ports(&settings).await;
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
        },
    )
    .await;
}

#[tokio::test]
async fn reconcile_settles_lost_answers_on_the_freelancer_api_by_lookup_never_by_a_resend() {
    let sandbox = SandboxOptions {
        // Any second send would be a second bid.
        refuse_second_bid: false,
        ..SandboxOptions::default()
    };
    with_system(Backend::Real, sandbox, |stack| async move {
        let mut overrides = rules();
        overrides.extend([
            (
                "BIDORCH__MARKETPLACES__FREELANCER__API",
                "freelancer".to_owned(),
            ),
            (
                "BIDORCH__MARKETPLACES__FREELANCER__LOOKUP_DELAY",
                "200ms".to_owned(),
            ),
        ]);
        let settings = stack.settings(&overrides);
        let (ledger, _) = stack.ports(&settings).await;
        let system = stack.system(&settings, Some(ledger.clone()), None).await;
        let mut keys = Vec::new();
        for project in ["9001", "9002"] {
            stack.sandbox.lose_next_responses(1);
            let body = support::event(serde_json::json!({
                "marketplace": "freelancer",
                "posting_id": project,
                "title": "Rust service",
                "budget": {"min": "100", "max": "500", "kind": null},
            }));
            let outcome = process(&system, &body).await;
            assert!(matches!(outcome, Outcome::Transient { .. }), "{outcome:?}");
            keys.push(support::key("freelancer", project));
        }
        let requests = stack.sandbox.stats().requests;
        // The lookup is due lookup_delay after the send (a request in flight may yet land).
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut cmd = bidorch(&stack, &["reconcile", "--older-than", "0s", "--quiet"]);
        cmd.envs(overrides.iter().map(|(k, v)| (*k, v.as_str())));
        let real = tokio::task::spawn_blocking(move || cmd.output().expect("bidorch runs"))
            .await
            .expect("join");
        let out = String::from_utf8_lossy(&real.stdout);
        assert!(real.status.success(), "{out}{real:?}");
        assert!(out.contains("settled 2 posting(s): placed 2"), "{out}");
        assert_eq!(
            stack.sandbox.stats().requests,
            requests,
            "nothing sent again"
        );
        assert_eq!(stack.sandbox.stats().lookups, 2);
        assert!(stack.sandbox.stats().duplicates.is_empty());
        for k in &keys {
            let entry = row(&*ledger.ledger, k).await;
            assert_eq!(entry.state, LedgerState::Placed, "{k}");
            assert_eq!(entry.bid_id.as_deref(), Some(stack.bids(k)[0].as_str()));
        }
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
    with_system(
        Backend::Real,
        SandboxOptions::default(),
        |stack| async move {
            let settings = stack.settings(&rules());
            let (ledger, _) = stack.ports(&settings).await;
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
        },
    )
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
    with_system(Backend::Real, naive, |stack| async move {
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
    with_system(
        Backend::Real,
        SandboxOptions::default(),
        |stack| async move {
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
                    serde_json::from_slice::<serde_json::Value>(&out.stdout)
                        .expect("one JSON object")
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
        },
    )
    .await;
}
