//! The ledger over months, as the product runs: separate `bidorch worker` processes with the
//! default configuration prune what is past `ledger.retention` (rows dated in the past by the
//! test, never by waiting), a posting re-published after its row was pruned never reaches the
//! marketplace again, `bidorch ledger prune --dry-run` counts what would go, and the workers'
//! automatic reconcile settles unknown sends — never one waiting out a Retry-After, never on a
//! paused marketplace.

use std::time::Duration;

use bidorch::ledger::{Claim, ClaimRequest, Finish, Intent, LedgerState, Scope};
use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::marketplace::{BidTerms, contract};
use bidorch::posting::PostingKey;
use bidorch::publish::OutgoingEvent;
use chrono::Utc;

use crate::support;
use support::queue::eventually;
use support::scenario::{Scenario, output_text};

const SETTLE: Duration = Duration::from_secs(90);

/// A posting of `posting_id` on upwork, posted `days_ago`, worth a bid.
fn posted(posting_id: &str, days_ago: i64) -> OutgoingEvent {
    let body = serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "marketplace": "upwork",
        "posting_id": posting_id,
        "title": "Keep the promise for months",
        "posted_at": (Utc::now() - chrono::Duration::days(days_ago)
            - chrono::Duration::minutes(5)).to_rfc3339(),
        "budget": {"min": 10, "max": "1200.00", "currency": "USD"},
    });
    OutgoingEvent::parse(body.to_string()).expect("valid event")
}

fn key(posting_id: &str) -> PostingKey {
    PostingKey::new("upwork", posting_id).expect("valid key")
}

/// The scenario's schema on a connection of the test's own.
async fn database(scenario: &Scenario) -> sqlx::PgPool {
    let schema = scenario.names.clone();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            let schema = schema.clone();
            Box::pin(async move {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SET search_path TO \"{schema}\""
                )))
                .execute(conn)
                .await
                .map(drop)
            })
        })
        .connect(&support::database_url())
        .await
        .expect("the test's own connection")
}

/// Dates `posting_id`'s outcome (and its attempts) `days` back, as if written then.
async fn date_back(db: &sqlx::PgPool, posting_id: &str, days: i32) {
    for table in ["bid_ledger SET updated_at", "bid_attempts SET finished_at"] {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} = now() - make_interval(days => $1) WHERE posting_id = $2"
        )))
        .bind(days)
        .bind(posting_id)
        .execute(db)
        .await
        .expect("date the row back");
        assert!(done.rows_affected() >= 1, "{posting_id} has a row");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_retention_are_pruned_and_their_postings_never_bid_again() {
    let Some(mut scenario) = Scenario::start("retain", SandboxOptions::default(), &[]).await else {
        return; // skipped, said by the check
    };
    scenario.spawn_worker("a");
    scenario.wait_ready().await;
    // First life, while they were new: three postings bid once each. The story then dates
    // their rows back to when that happened.
    scenario
        .publish(&[
            posted("old_placed", 0),
            posted("recent_placed", 0),
            posted("kept_pending_twin", 0),
        ])
        .await;
    let sandbox = scenario.sandbox.clone();
    eventually(SETTLE, "three bids", || async {
        sandbox.stats().bids_created == 3
    })
    .await;
    let requests_before = sandbox.stats().requests;
    // Ledger rows were written now; the story dates them.
    let db = database(&scenario).await;
    eventually(SETTLE, "three placed rows", || async {
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM bid_ledger WHERE state = 'placed'")
                .fetch_one(&db)
                .await
                .expect("count");
        rows == 3
    })
    .await;
    date_back(&db, "old_placed", 100).await;
    date_back(&db, "kept_pending_twin", 100).await;
    date_back(&db, "recent_placed", 10).await;
    // A pending row (a send of unknown fate) older than the window: never pruned.
    sqlx::query(
        "UPDATE bid_ledger SET state = 'pending', bid_id = NULL \
         WHERE posting_id = 'kept_pending_twin'",
    )
    .execute(&db)
    .await
    .expect("make it pending");

    let dry = scenario
        .command(&["ledger", "prune", "--dry-run"], &[])
        .await;
    let said = output_text(&dry);
    assert!(dry.status.success(), "{said}");
    assert!(
        said.contains("dry run: would prune 1 posting(s), 1 attempt(s)")
            && said.contains("ledger.retention 90d")
            && said.contains("nothing was deleted"),
        "{said}"
    );
    println!("{said}");
    assert!(
        scenario
            .ledger
            .ledger
            .lookup(&key("old_placed"))
            .await
            .expect("lookup")
            .is_some(),
        "a dry run deletes nothing"
    );

    // A worker starting prunes at once (then every ledger.prune_every).
    let b = scenario.spawn_worker("b");
    scenario.wait_ready().await;
    eventually(SETTLE, "the old row pruned", || async {
        scenario.workers[b]
            .metric("bidorch_ledger_pruned_total{table=\"postings\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    let lookup = |id: &'static str| {
        let ledger = scenario.ledger.ledger.clone();
        async move { ledger.lookup(&key(id)).await.expect("lookup") }
    };
    assert!(lookup("old_placed").await.is_none(), "pruned");
    assert_eq!(
        lookup("kept_pending_twin").await.expect("kept").state,
        LedgerState::Pending,
        "a pending row is never pruned"
    );
    assert_eq!(
        lookup("recent_placed").await.expect("kept").state,
        LedgerState::Placed,
        "inside the window"
    );
    let rows = scenario.workers[b]
        .metric("bidorch_ledger_rows{state=\"placed\"}")
        .await;
    assert_eq!(rows, Some(1.0), "the size gauge counts what is left");

    // The postings come again: the pruned one is skipped by its date, the recent one is a
    // duplicate the ledger still knows, a new one is bid.
    scenario
        .publish(&[
            posted("old_placed", 100),
            posted("recent_placed", 10),
            posted("brand_new", 0),
        ])
        .await;
    eventually(SETTLE, "the re-published old posting decided", || async {
        lookup("old_placed")
            .await
            .is_some_and(|e| e.state == LedgerState::Skipped)
    })
    .await;
    eventually(SETTLE, "the new posting bid", || async {
        sandbox.stats().bids_created == 4
    })
    .await;
    let old = lookup("old_placed").await.expect("decided again");
    assert!(
        old.detail
            .as_deref()
            .is_some_and(|d| d.starts_with("beyond_retention:100d > ledger.retention 90d")),
        "{:?}",
        old.detail
    );
    let stats = sandbox.stats();
    assert_eq!(
        stats.requests,
        requests_before + 1,
        "only the new posting reached the marketplace"
    );
    for id in ["old_placed", "recent_placed", "brand_new"] {
        assert_eq!(stats.postings[&format!("upwork:{id}")].bids, 1, "{id}");
    }
    scenario.stop().await;
}

/// A claimed send nobody recorded: what a worker lost between the call and the record leaves.
async fn lost_send(scenario: &Scenario, marketplace: &str, posting_id: &str) -> (PostingKey, i64) {
    let key = PostingKey::new(marketplace, posting_id).expect("valid key");
    let terms = BidTerms {
        amount: rust_decimal::Decimal::from(300),
        currency: "USD".to_owned(),
        cover_letter: "Lost on the way back".to_owned(),
    };
    let claim = ClaimRequest {
        key: key.clone(),
        event_id: uuid::Uuid::new_v4().to_string(),
        intent: Intent::Bid(contract::stored_request(&key, &terms)),
        instance: "gone-worker".to_owned(),
        trace_id: None,
        trace_parent: None,
        daily_cap: None,
        day: Utc::now().date_naive(),
        verify: false,
        budget: None,
    };
    match scenario
        .ledger
        .ledger
        .claim(claim.clone())
        .await
        .expect("claim")
    {
        Claim::Send { epoch, .. } => (key, epoch),
        other => panic!("expected a send, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_settle_unknown_sends_themselves_but_not_a_retry_after_or_a_paused_marketplace() {
    // The settings under test: how old a send must be and how often a worker looks.
    let overrides = [
        ("BIDORCH__RECONCILE__OLDER_THAN", "1s".to_owned()),
        ("BIDORCH__RECONCILE__AUTO_EVERY", "1s".to_owned()),
    ];
    let Some(mut scenario) =
        Scenario::start("autorec", SandboxOptions::default(), &overrides).await
    else {
        return; // skipped, said by the check
    };
    let (lost, _) = lost_send(&scenario, "upwork", "lost_answer").await;
    let (paused, _) = lost_send(&scenario, "freelancer", "paused_lost").await;
    let (waiting, epoch) = lost_send(&scenario, "upwork", "retry_after").await;
    scenario
        .ledger
        .ledger
        .finish(
            &waiting,
            epoch,
            Finish::Pending {
                reason: bidorch::ledger::Pending::Transient,
                http_status: Some(429),
                detail: Some("HTTP 429".to_owned()),
                back_at: Some(Utc::now() + chrono::Duration::hours(1)),
            },
        )
        .await
        .expect("finish");
    scenario
        .ledger
        .controls
        .pause(
            &[Scope::Marketplace("freelancer".into())],
            "contract talks",
            "ana@ops",
            None,
        )
        .await
        .expect("pause");

    for name in ["a", "b"] {
        scenario.spawn_worker(name);
    }
    scenario.wait_ready().await;
    let ledger = scenario.ledger.ledger.clone();
    eventually(SETTLE, "the lost send settled", || async {
        ledger
            .lookup(&lost)
            .await
            .expect("lookup")
            .is_some_and(|e| e.state == LedgerState::Placed)
    })
    .await;
    let sandbox = scenario.sandbox.clone();
    // Another round for each worker, and the paused marketplace is still untouched.
    let rounds = || async {
        let mut n = 0.0;
        for w in &scenario.workers {
            n += w
                .metric("bidorch_reconcile_auto_total{outcome=\"marketplace_paused\"}")
                .await
                .unwrap_or(0.0);
        }
        n
    };
    eventually(SETTLE, "the paused marketplace held back twice", || async {
        rounds().await >= 2.0
    })
    .await;
    let stats = sandbox.stats();
    assert_eq!(stats.postings[&lost.to_string()].bids, 1);
    assert!(
        !stats.postings.contains_key(&paused.to_string()),
        "no call to a paused marketplace"
    );
    assert!(
        !stats.postings.contains_key(&waiting.to_string()),
        "a posting waiting out a Retry-After is left to its message"
    );
    assert_eq!(
        ledger
            .lookup(&waiting)
            .await
            .expect("lookup")
            .map(|e| e.state),
        Some(LedgerState::Pending)
    );

    scenario
        .ledger
        .controls
        .resume(&[Scope::Marketplace("freelancer".into())], "ana@ops")
        .await
        .expect("resume");
    eventually(SETTLE, "the paused marketplace's send settled", || async {
        ledger
            .lookup(&paused)
            .await
            .expect("lookup")
            .is_some_and(|e| e.state == LedgerState::Placed)
    })
    .await;
    let stats = sandbox.stats();
    assert_eq!(stats.postings[&paused.to_string()].bids, 1);
    assert_eq!(stats.postings[&lost.to_string()].bids, 1);
    scenario.stop().await;
}
