//! The fleet-wide manual pause as operators use it: `bidorch pause` and `bidorch resume` run as
//! commands against separate `bidorch worker` processes with the default configuration. What is
//! asserted is what the commands report — every live worker applied the new generation, or the
//! ones that have not are named — never a time.

use std::time::Duration;

use bidorch::ledger::LedgerState;
use bidorch::marketplace::sandbox::SandboxOptions;

use crate::support;
use support::queue::eventually;
use support::scenario::{Scenario, load, output_text};

const SETTLE: Duration = Duration::from_secs(180);

/// Who the commands run as (`USER`): the audit names them.
fn operator() -> [(&'static str, String); 1] {
    [("USER", "test-operator".to_owned())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_marketplace_gets_no_bid_until_resumed_and_each_held_posting_one_after() {
    let Some(mut scenario) = Scenario::start("pause", SandboxOptions::default(), &[]).await else {
        return; // skipped, said by the check
    };
    for name in ["a", "b", "c"] {
        scenario.spawn_worker(name);
    }
    scenario.wait_ready().await;

    let paused = scenario
        .command(
            &["pause", "upwork", "--reason", "contract renegotiation"],
            &operator(),
        )
        .await;
    let said = output_text(&paused);
    assert!(paused.status.success(), "{said}");
    assert!(
        said.contains("paused upwork by test-operator@")
            && said.contains("applied by 3 live worker(s)"),
        "{said}"
    );

    let load = load("pause", 60, 2);
    scenario.publish(&load.events).await;
    // The other marketplace goes on: every eligible freelancer posting is bid.
    let sandbox = scenario.sandbox.clone();
    let freelancer: Vec<&String> = load
        .eligible
        .iter()
        .filter(|k| k.starts_with("freelancer:"))
        .collect();
    eventually(SETTLE, "the freelancer postings bid", || async {
        let stats = sandbox.stats();
        freelancer
            .iter()
            .all(|k| stats.postings.get(*k).is_some_and(|p| p.bids == 1))
    })
    .await;
    let upwork_requests = |stats: &bidorch::marketplace::sandbox::SandboxStats| -> u64 {
        stats
            .postings
            .iter()
            .filter(|(k, _)| k.starts_with("upwork:"))
            .map(|(_, p)| p.requests)
            .sum()
    };
    assert_eq!(
        upwork_requests(&sandbox.stats()),
        0,
        "no call of any kind to a paused marketplace"
    );

    // A worker started during the pause starts paused.
    let late = scenario.spawn_worker("late");
    scenario.wait_ready().await;
    eventually(
        Duration::from_secs(30),
        "the late worker reports the pause",
        || async {
            scenario.workers[late]
                .metric("bidorch_manual_pause{marketplace=\"upwork\"}")
                .await
                == Some(1.0)
        },
    )
    .await;

    // A worker that cannot apply a change is named; the change stands.
    scenario.workers[0].signal("STOP");
    let unapplied = scenario
        .command(
            &["pause", "freelancer", "--reason", "probe", "--wait", "3s"],
            &operator(),
        )
        .await;
    let said = output_text(&unapplied);
    assert_eq!(unapplied.status.code(), Some(1), "{said}");
    assert!(
        said.contains("not yet applied") && said.contains(&format!("{}-a", scenario.names)),
        "the stopped worker is named: {said}"
    );
    scenario.workers[0].signal("CONT");
    assert_eq!(upwork_requests(&sandbox.stats()), 0);

    let resumed = scenario.command(&["resume", "--all"], &operator()).await;
    let said = output_text(&resumed);
    assert!(resumed.status.success(), "{said}");
    assert!(said.contains("applied by 4 live worker(s)"), "{said}");

    scenario.wait_settled(&load, SETTLE).await;
    // Every held posting bid once after, nothing rejected, nothing parked.
    scenario.assert_promise(&load).await;
    let status = scenario.command(&["status", "--json"], &operator()).await;
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(json["marketplaces"][1]["name"], "upwork");
    assert_eq!(json["marketplaces"][1]["state"], "bidding");
    assert_eq!(json["workers"].as_array().map(Vec::len), Some(4));
    let counts = scenario
        .ledger
        .reports
        .counts_by_state()
        .await
        .expect("counts");
    assert!(counts.contains(&(LedgerState::Rejected, 0)));
    scenario.stop().await;
}
