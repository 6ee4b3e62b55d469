//! The ledger contract: one async fn per promise, generic over `Arc<dyn BidLedger>`, so the
//! PostgreSQL and SQLite backends are held to exactly the same semantics. Each fn gets a fresh,
//! empty ledger.

use std::collections::BTreeSet;
use std::sync::Arc;

use bidorch::ledger::{BidLedger, Claim, Fenced, FinalOutcome, LedgerState};
use bidorch::posting::PostingKey;
use chrono::{Duration, Utc};

fn key(marketplace: &str, posting_id: &str) -> PostingKey {
    PostingKey::new(marketplace, posting_id).expect("valid test key")
}

async fn claimed(ledger: &Arc<dyn BidLedger>, key: &PostingKey, event_id: &str) -> i64 {
    match ledger.claim(key, event_id).await.expect("claim") {
        Claim::Claimed { epoch } => epoch,
        other => panic!("expected a claim, got {other:?}"),
    }
}

fn placed(bid_id: &str) -> FinalOutcome {
    FinalOutcome::Placed {
        bid_id: Some(bid_id.to_owned()),
        detail: None,
    }
}

/// The first claim inserts a pending row at epoch 1; each further claim bumps the epoch.
pub async fn claims_bump_the_epoch(ledger: Arc<dyn BidLedger>) {
    let k = key("upwork", "job_1");
    assert_eq!(ledger.lookup(&k).await.expect("lookup"), None);

    assert_eq!(claimed(&ledger, &k, "evt-1").await, 1);
    assert_eq!(claimed(&ledger, &k, "evt-2").await, 2);
    assert_eq!(claimed(&ledger, &k, "evt-2").await, 3);

    let entry = ledger
        .lookup(&k)
        .await
        .expect("lookup")
        .expect("row exists");
    assert_eq!(entry.state, LedgerState::Pending);
    assert_eq!(entry.epoch, 3);
    assert_eq!(entry.key, k);
}

/// A superseded epoch cannot pass the fence before the marketplace call.
pub async fn stale_epoch_cannot_mark_sending(ledger: Arc<dyn BidLedger>) {
    let k = key("upwork", "job_stale_send");
    let old = claimed(&ledger, &k, "evt-1").await;
    let new = claimed(&ledger, &k, "evt-2").await;

    assert_eq!(
        ledger.mark_sending(&k, old).await.expect("mark_sending"),
        Fenced::Superseded { current_epoch: new }
    );
    assert_eq!(
        ledger.mark_sending(&k, new).await.expect("mark_sending"),
        Fenced::Written
    );
}

/// A superseded epoch cannot record an outcome, and the row stays pending under the new epoch.
pub async fn stale_epoch_cannot_record(ledger: Arc<dyn BidLedger>) {
    let k = key("upwork", "job_stale_record");
    let old = claimed(&ledger, &k, "evt-1").await;
    let new = claimed(&ledger, &k, "evt-2").await;

    assert_eq!(
        ledger
            .record(&k, old, &placed("bid-old"))
            .await
            .expect("record"),
        Fenced::Superseded { current_epoch: new }
    );
    let entry = ledger
        .lookup(&k)
        .await
        .expect("lookup")
        .expect("row exists");
    assert_eq!(entry.state, LedgerState::Pending);
    assert_eq!(entry.epoch, new);
    assert_eq!(entry.bid_id, None);

    assert_eq!(
        ledger
            .record(&k, new, &placed("bid-new"))
            .await
            .expect("record"),
        Fenced::Written
    );
    let entry = ledger
        .lookup(&k)
        .await
        .expect("lookup")
        .expect("row exists");
    assert_eq!(entry.state, LedgerState::Placed);
    assert_eq!(entry.bid_id.as_deref(), Some("bid-new"));
}

/// Once final, nothing — same epoch, stale epoch, mark_sending or a new outcome — changes the row.
pub async fn final_outcome_is_never_overwritten(ledger: Arc<dyn BidLedger>) {
    let k = key("freelancer", "job_final");
    let stale = claimed(&ledger, &k, "evt-1").await;
    let epoch = claimed(&ledger, &k, "evt-2").await;
    let skipped = FinalOutcome::Skipped {
        reasons: vec!["budget below minimum".into(), "blocked keyword".into()],
    };
    assert_eq!(
        ledger.record(&k, epoch, &skipped).await.expect("record"),
        Fenced::Written
    );
    let recorded = ledger
        .lookup(&k)
        .await
        .expect("lookup")
        .expect("row exists");

    for (epoch, outcome) in [
        (epoch, placed("bid-late")),
        (stale, placed("bid-stale")),
        (
            epoch,
            FinalOutcome::Rejected {
                status: 422,
                body_excerpt: "nope".into(),
            },
        ),
    ] {
        assert_eq!(
            ledger.record(&k, epoch, &outcome).await.expect("record"),
            Fenced::Final(recorded.clone())
        );
    }
    assert_eq!(
        ledger.mark_sending(&k, epoch).await.expect("mark_sending"),
        Fenced::Final(recorded.clone())
    );
    assert_eq!(
        ledger.lookup(&k).await.expect("lookup"),
        Some(recorded.clone())
    );
    assert_eq!(
        recorded.detail.as_deref(),
        Some("budget below minimum,blocked keyword")
    );
}

/// A claim on a final row changes nothing and returns the outcome.
pub async fn claim_on_final_returns_final(ledger: Arc<dyn BidLedger>) {
    let k = key("upwork", "job_claim_final");
    let epoch = claimed(&ledger, &k, "evt-1").await;
    ledger
        .record(&k, epoch, &placed("bid-1"))
        .await
        .expect("record");

    let claim = ledger.claim(&k, "evt-redelivered").await.expect("claim");
    let Claim::Final(entry) = claim else {
        panic!("expected Final, got {claim:?}");
    };
    assert_eq!(entry.state, LedgerState::Placed);
    assert_eq!(
        entry.epoch, epoch,
        "a claim on a final row must not bump the epoch"
    );
    assert_eq!(entry.bid_id.as_deref(), Some("bid-1"));
}

/// 32 concurrent claims of one posting get 32 distinct epochs: exactly 1..=32.
pub async fn concurrent_claims_yield_distinct_epochs(ledger: Arc<dyn BidLedger>) {
    const CLAIMS: i64 = 32;
    let k = key("upwork", "job_contended");
    let tasks: Vec<_> = (0..CLAIMS)
        .map(|i| {
            let ledger = ledger.clone();
            let k = k.clone();
            tokio::spawn(async move { claimed(&ledger, &k, &format!("evt-{i}")).await })
        })
        .collect();
    let mut epochs = BTreeSet::new();
    for task in tasks {
        let epoch = task.await.expect("claim task");
        assert!(epochs.insert(epoch), "epoch {epoch} handed out twice");
    }
    assert_eq!(epochs, (1..=CLAIMS).collect::<BTreeSet<_>>());
    let entry = ledger
        .lookup(&k)
        .await
        .expect("lookup")
        .expect("row exists");
    assert_eq!(entry.epoch, CLAIMS);
}

/// lookup reads back each final outcome's state, bid id and detail, per posting.
pub async fn lookup_reads_back_recorded_outcomes(ledger: Arc<dyn BidLedger>) {
    let cases = [
        (key("upwork", "job_a"), placed("bid-a"), Some("bid-a"), None),
        (
            key("upwork", "job_b"),
            FinalOutcome::Placed {
                bid_id: None,
                detail: Some("409: exists".into()),
            },
            None,
            Some("409: exists"),
        ),
        (
            key("freelancer", "job_a"),
            FinalOutcome::Rejected {
                status: 422,
                body_excerpt: "amount too low".into(),
            },
            None,
            Some("422: amount too low"),
        ),
    ];
    for (k, outcome, _, _) in &cases {
        let epoch = claimed(&ledger, k, "evt").await;
        assert_eq!(
            ledger.record(k, epoch, outcome).await.expect("record"),
            Fenced::Written
        );
    }
    for (k, outcome, bid_id, detail) in &cases {
        let entry = ledger.lookup(k).await.expect("lookup").expect("row exists");
        assert_eq!(&entry.key, k);
        assert_eq!(entry.state, outcome.state());
        assert_eq!(entry.epoch, 1);
        assert_eq!(entry.bid_id.as_deref(), *bid_id);
        assert_eq!(entry.detail.as_deref(), *detail);
    }
    assert_eq!(
        ledger
            .lookup(&key("upwork", "job_never_seen"))
            .await
            .expect("lookup"),
        None
    );
}

/// counts_by_state lists all four states, zeros included.
pub async fn counts_by_state_counts_every_state(ledger: Arc<dyn BidLedger>) {
    let empty = ledger.counts_by_state().await.expect("counts");
    assert_eq!(
        empty,
        vec![
            (LedgerState::Pending, 0),
            (LedgerState::Placed, 0),
            (LedgerState::Skipped, 0),
            (LedgerState::Rejected, 0),
        ]
    );

    let outcomes = [
        None,
        None,
        Some(placed("b1")),
        Some(placed("b2")),
        Some(placed("b3")),
        Some(FinalOutcome::Skipped {
            reasons: vec!["r".into()],
        }),
    ];
    for (i, outcome) in outcomes.iter().enumerate() {
        let k = key("upwork", &format!("job_{i}"));
        let epoch = claimed(&ledger, &k, "evt").await;
        if let Some(outcome) = outcome {
            ledger.record(&k, epoch, outcome).await.expect("record");
        }
    }
    assert_eq!(
        ledger.counts_by_state().await.expect("counts"),
        vec![
            (LedgerState::Pending, 2),
            (LedgerState::Placed, 3),
            (LedgerState::Skipped, 1),
            (LedgerState::Rejected, 0),
        ]
    );
}

/// placed_since counts placed rows recorded at or after the given time, and nothing else.
pub async fn placed_since_counts_recent_placed_rows(ledger: Arc<dyn BidLedger>) {
    let before = Utc::now() - Duration::hours(1);
    for i in 0..3 {
        let k = key("upwork", &format!("job_p{i}"));
        let epoch = claimed(&ledger, &k, "evt").await;
        ledger
            .record(&k, epoch, &placed(&format!("bid-{i}")))
            .await
            .expect("record");
    }
    let k = key("upwork", "job_skip");
    let epoch = claimed(&ledger, &k, "evt").await;
    ledger
        .record(
            &k,
            epoch,
            &FinalOutcome::Skipped {
                reasons: vec!["r".into()],
            },
        )
        .await
        .expect("record");
    claimed(&ledger, &key("upwork", "job_pending"), "evt").await;

    assert_eq!(ledger.placed_since(before).await.expect("placed_since"), 3);
    let after = Utc::now() + Duration::hours(1);
    assert_eq!(ledger.placed_since(after).await.expect("placed_since"), 0);
}

/// A write for a posting that was never claimed is an error, not a silent success.
pub async fn write_without_claim_is_an_error(ledger: Arc<dyn BidLedger>) {
    let k = key("upwork", "job_unclaimed");
    let err = ledger
        .record(&k, 1, &placed("bid"))
        .await
        .expect_err("no row to write");
    assert!(!err.is_retryable(), "{err}");
    assert!(ledger.mark_sending(&k, 1).await.is_err());
    assert_eq!(ledger.lookup(&k).await.expect("lookup"), None);
}

/// health answers on a working database.
pub async fn health_answers(ledger: Arc<dyn BidLedger>) {
    ledger.health().await.expect("healthy");
}
