//! The remote scoring service (the sandbox's stand-in at `/v1/score`) over real HTTP.

use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::pipeline::{Component, Outcome};

use super::*;
use crate::support::system::{Backend, TestSystem, with_system};

fn scored(stack: &TestSystem, on_failure: &str) -> Vec<(&'static str, String)> {
    let mut o = rules();
    o.push((
        "BIDORCH__SCORING__URL",
        format!("{}/v1/score", stack.sandbox_url),
    ));
    o.push(("BIDORCH__SCORING__THRESHOLD", "0.5".to_owned()));
    o.push(("BIDORCH__SCORING__ON_FAILURE", on_failure.to_owned()));
    o
}

async fn a_low_score_skips_with_its_reason_and_a_high_one_bids(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        let settings = stack.settings(&scored(&stack, "wait"));
        let (ledger, _) = stack.ports(&settings).await;
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

async fn a_scoring_outage_waits_skips_or_falls_back_to_the_rules_as_configured(backend: Backend) {
    with_system(backend, SandboxOptions::default(), |stack| async move {
        stack.sandbox.set_scoring_down(true);
        let (ledger, _) = stack.ports(&stack.settings(&rules())).await;

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

crate::on_both_backends!(
    a_low_score_skips_with_its_reason_and_a_high_one_bids,
    a_scoring_outage_waits_skips_or_falls_back_to_the_rules_as_configured,
);
