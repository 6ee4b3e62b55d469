//! The ledger contract: one async fn per promise, generic over `Ledger`, so the
//! PostgreSQL and SQLite backends are held to exactly the same semantics. Each fn gets a fresh,
//! empty ledger.

use std::collections::BTreeSet;
use std::sync::Arc;

use bidorch::ledger::{
    Batched, BidLedger, Claim, ClaimRequest, ControlStore, Fenced, FinalOutcome, Finish, Intent,
    LedgerBackend, LedgerEntry, LedgerError, LedgerState, Scope, Search, StoredRequest, WorkerBeat,
};
use bidorch::marketplace::{BidTerms, contract};
use bidorch::posting::PostingKey;
use chrono::{Duration, NaiveDate, Utc};
use rust_decimal::Decimal;

/// A backend under test: its batch calls and reports as they are, its single-posting calls
/// through the lanes the pipeline uses ([`Batched`]).
#[derive(Clone)]
pub struct Ledger {
    backend: Arc<dyn LedgerBackend>,
    single: Arc<dyn BidLedger>,
    /// The operators' side of the same database.
    pub controls: Arc<dyn ControlStore>,
}

impl Ledger {
    pub fn new(backend: Arc<dyn LedgerBackend>, controls: Arc<dyn ControlStore>) -> Self {
        Self {
            single: Arc::new(Batched::new(backend.clone())),
            backend,
            controls,
        }
    }

    pub async fn lookup(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        self.single.lookup(key).await
    }

    pub async fn claim(&self, claim: ClaimRequest) -> Result<Claim, LedgerError> {
        self.single.claim(claim).await
    }

    pub async fn finish(
        &self,
        key: &PostingKey,
        epoch: i64,
        finish: Finish,
    ) -> Result<Fenced, LedgerError> {
        self.single.finish(key, epoch, finish).await
    }

    pub async fn health(&self) -> Result<(), LedgerError> {
        self.single.health().await
    }
}

impl std::ops::Deref for Ledger {
    type Target = dyn LedgerBackend;
    fn deref(&self) -> &Self::Target {
        self.backend.as_ref()
    }
}

pub fn key(marketplace: &str, posting_id: &str) -> PostingKey {
    PostingKey::new(marketplace, posting_id).expect("valid test key")
}

/// A bid of `amount` USD on `key`.
pub fn request(key: &PostingKey, amount: i64) -> StoredRequest {
    let terms = BidTerms {
        amount: Decimal::from(amount),
        currency: "USD".to_owned(),
        cover_letter: "Hello from the contract".to_owned(),
    };
    contract::stored_request(key, &terms)
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// A claim of `key` with `intent` by instance `w1`.
pub fn claim_of(key: &PostingKey, intent: Intent) -> ClaimRequest {
    ClaimRequest {
        key: key.clone(),
        event_id: "evt-1".to_owned(),
        intent,
        instance: "w1".to_owned(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
        trace_parent: Some(format!(
            "00-{}-{:016x}-01",
            "4bf92f3577b34da6a3ce929d0e0e4736", 7
        )),
        daily_cap: None,
        day: today(),
        verify: false,
        budget: None,
    }
}

fn bid(key: &PostingKey, amount: i64) -> ClaimRequest {
    claim_of(key, Intent::Bid(request(key, amount)))
}

async fn sent(ledger: &Ledger, claim: &ClaimRequest) -> (i64, StoredRequest, bool) {
    match ledger.claim(claim.clone()).await.expect("claim") {
        Claim::Send {
            epoch,
            request,
            resend,
            ..
        } => (epoch, request, resend),
        other => panic!("expected a send, got {other:?}"),
    }
}

fn placed(bid_id: &str) -> Finish {
    Finish::Final(FinalOutcome::Placed {
        bid_id: Some(bid_id.to_owned()),
        detail: None,
        http_status: Some(201),
    })
}

fn transient() -> Finish {
    Finish::Pending {
        reason: bidorch::ledger::Pending::Transient,
        http_status: Some(503),
        detail: Some("HTTP 503".to_owned()),
        back_at: None,
    }
}

/// The first claim of a bid inserts the row at epoch 1, stores the request and counts the send.
pub async fn a_first_bid_claim_stores_the_request_and_counts_the_send(ledger: Ledger) {
    let k = key("upwork", "job_1");
    assert_eq!(ledger.lookup(&k).await.expect("lookup"), None);

    let (epoch, stored, resend) = sent(&ledger, &bid(&k, 450)).await;

    assert_eq!((epoch, resend), (1, false));
    assert_eq!(stored, request(&k, 450));
    let entry = ledger.lookup(&k).await.expect("lookup").expect("row");
    assert_eq!(
        (entry.state, entry.epoch, entry.sends),
        (LedgerState::Pending, 1, 1)
    );
    assert_eq!(entry.request, Some(request(&k, 450)));
    assert!(entry.sent_at.is_some());
}

/// Once a request was sent, every later claim sends that request again, whatever it asks.
pub async fn a_sent_request_is_sticky_whatever_later_claims_ask(ledger: Ledger) {
    let k = key("upwork", "job_sticky");
    let (first, original, _) = sent(&ledger, &bid(&k, 450)).await;
    ledger.finish(&k, first, transient()).await.expect("finish");

    // A lower budget, a policy that now says skip, a cap now full: the stored request wins.
    let again = [
        bid(&k, 300),
        claim_of(&k, Intent::Skip(vec!["blocked_keyword:rust".into()])),
        ClaimRequest {
            daily_cap: Some(0),
            ..bid(&k, 450)
        },
        claim_of(&k, Intent::Resend),
    ];
    for (n, claim) in again.iter().enumerate() {
        let (epoch, stored, resend) = sent(&ledger, claim).await;
        assert_eq!(epoch, first + 1 + n as i64);
        assert!(resend);
        assert_eq!(stored, original, "byte for byte");
    }
    let entry = ledger.lookup(&k).await.expect("lookup").expect("row");
    assert_eq!((entry.state, entry.sends), (LedgerState::Pending, 5));
}

/// A skip is recorded final by the claim itself, with its reasons.
pub async fn the_first_attempts_trace_is_the_postings_for_good(ledger: Ledger) {
    let k = key("upwork", "traced");
    let first = claim_of(&k, Intent::Bid(request(&k, 450)));
    let Claim::Send {
        epoch,
        trace_parent,
        ..
    } = ledger.claim(first.clone()).await.expect("claim")
    else {
        panic!("the first claim sends");
    };
    assert_eq!(trace_parent, first.trace_parent);
    ledger.finish(&k, epoch, transient()).await.expect("finish");
    // Another event's attempt, in another trace, and a batch of them: the posting's stays.
    let later = ClaimRequest {
        event_id: "evt-2".to_owned(),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".to_owned()),
        trace_parent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
        ..claim_of(&k, Intent::Bid(request(&k, 450)))
    };
    for claimed in ledger
        .claim_many(&[later.clone(), later])
        .await
        .expect("claims")
    {
        let Claim::Send { trace_parent, .. } = claimed else {
            panic!("a resend");
        };
        assert_eq!(trace_parent, first.trace_parent);
    }
    let row = ledger.lookup(&k).await.expect("lookup").expect("the row");
    assert_eq!(row.trace_parent, first.trace_parent);
    // A posting claimed in a batch with others keeps its own.
    let (a, b) = (key("upwork", "traced-a"), key("upwork", "traced-b"));
    let mut claim_b = claim_of(&b, Intent::Skip(vec!["r".into()]));
    claim_b.trace_parent = Some("00-11111111111111111111111111111111-2222222222222222-01".into());
    ledger
        .claim_many(&[claim_of(&a, Intent::Bid(request(&a, 1))), claim_b.clone()])
        .await
        .expect("claims");
    let row_b = ledger.lookup(&b).await.expect("lookup").expect("the row");
    assert_eq!(row_b.trace_parent, claim_b.trace_parent);
}

pub async fn a_skip_is_recorded_final_by_the_claim(ledger: Ledger) {
    let k = key("upwork", "job_skip");
    let claimed = ledger
        .claim(claim_of(
            &k,
            Intent::Skip(vec![
                "below_min_budget".into(),
                "blocked_keyword:crypto".into(),
            ]),
        ))
        .await
        .expect("claim");
    assert_eq!(
        claimed,
        Claim::Skipped {
            reasons: vec!["below_min_budget".into(), "blocked_keyword:crypto".into()],
            capped: false
        }
    );
    let entry = ledger.lookup(&k).await.expect("lookup").expect("row");
    assert_eq!(entry.state, LedgerState::Skipped);
    assert_eq!(entry.sends, 0);
    assert!(matches!(
        ledger.claim(bid(&k, 1)).await,
        Ok(Claim::Final(_))
    ));
}

/// A final outcome is never overwritten, by a finish or a claim.
pub async fn a_final_outcome_is_never_overwritten(ledger: Ledger) {
    let k = key("upwork", "job_final");
    let (epoch, _, _) = sent(&ledger, &bid(&k, 450)).await;
    assert_eq!(
        ledger
            .finish(&k, epoch, placed("bid-1"))
            .await
            .expect("finish"),
        Fenced::Written
    );
    let rejected = Finish::Final(FinalOutcome::Rejected {
        status: 422,
        body_excerpt: "no".into(),
    });
    match ledger.finish(&k, epoch, rejected).await.expect("finish") {
        Fenced::Final(entry) => assert_eq!(entry.state, LedgerState::Placed),
        other => panic!("expected final, got {other:?}"),
    }
    match ledger.claim(bid(&k, 450)).await.expect("claim") {
        Claim::Final(entry) => {
            assert_eq!(entry.state, LedgerState::Placed);
            assert_eq!(entry.bid_id.as_deref(), Some("bid-1"));
        }
        other => panic!("expected final, got {other:?}"),
    }
}

/// A superseded epoch cannot finish; the current one can.
pub async fn a_stale_epoch_cannot_finish(ledger: Ledger) {
    let k = key("upwork", "job_stale");
    let (old, _, _) = sent(&ledger, &bid(&k, 450)).await;
    let (new, _, _) = sent(&ledger, &bid(&k, 450)).await;
    assert_eq!(
        ledger
            .finish(&k, old, placed("bid-old"))
            .await
            .expect("finish"),
        Fenced::Superseded { current_epoch: new }
    );
    assert_eq!(
        ledger
            .finish(&k, new, placed("bid-new"))
            .await
            .expect("finish"),
        Fenced::Written
    );
    let entry = ledger.lookup(&k).await.expect("lookup").expect("row");
    assert_eq!(entry.bid_id.as_deref(), Some("bid-new"));
}

/// Concurrent claims of one posting get distinct epochs (each is a fence).
pub async fn concurrent_claims_yield_distinct_epochs(ledger: Ledger) {
    let k = key("upwork", "job_race");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (ledger, claim) = (ledger.clone(), bid(&k, 450));
            tokio::spawn(async move { sent(&ledger, &claim).await.0 })
        })
        .collect();
    let mut epochs = BTreeSet::new();
    for t in tasks {
        epochs.insert(t.await.expect("task"));
    }
    assert_eq!(epochs, (1..=16).collect());
}

/// The daily cap is exact under concurrency: no more sends than slots, the rest `daily_cap`.
pub async fn the_daily_cap_is_exact_across_concurrent_claims(ledger: Ledger) {
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let ledger = ledger.clone();
            let claim = ClaimRequest {
                daily_cap: Some(7),
                ..bid(&key("capmk", &format!("job_{i}")), 100)
            };
            tokio::spawn(async move { ledger.claim(claim.clone()).await.expect("claim") })
        })
        .collect();
    let (mut sends, mut capped) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Claim::Send { .. } => sends += 1,
            Claim::Skipped {
                capped: true,
                reasons,
            } => {
                assert_eq!(reasons, vec!["daily_cap".to_owned()]);
                capped += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((sends, capped), (7, 17));
    // Another marketplace, or another day, has slots of its own.
    assert!(matches!(
        ledger
            .claim(ClaimRequest {
                daily_cap: Some(7),
                ..bid(&key("other", "job_0"), 100)
            })
            .await,
        Ok(Claim::Send { .. })
    ));
    assert!(matches!(
        ledger
            .claim(ClaimRequest {
                daily_cap: Some(7),
                day: today().succ_opt().unwrap(),
                ..bid(&key("capmk", "job_tomorrow"), 100)
            })
            .await,
        Ok(Claim::Send { .. })
    ));
}

/// A rejection gives its cap slot back; a placed bid or a transient answer keeps it.
pub async fn a_rejection_releases_its_cap_slot(ledger: Ledger) {
    let capped = |id: &str| ClaimRequest {
        daily_cap: Some(2),
        ..bid(&key("relmk", id), 100)
    };
    let (a, _, _) = sent(&ledger, &capped("a")).await;
    let (b, _, _) = sent(&ledger, &capped("b")).await;
    assert!(matches!(
        ledger.claim(capped("c")).await,
        Ok(Claim::Skipped { capped: true, .. })
    ));
    ledger
        .finish(&key("relmk", "a"), a, placed("bid-a"))
        .await
        .expect("finish");
    ledger
        .finish(&key("relmk", "b"), b, transient())
        .await
        .expect("finish");
    assert!(matches!(
        ledger.claim(capped("d")).await,
        Ok(Claim::Skipped { capped: true, .. })
    ));
    // b's retry re-sends under the slot it holds: no second slot taken.
    let (b2, _, resend) = sent(&ledger, &capped("b")).await;
    assert!(resend);
    let rejected = Finish::Final(FinalOutcome::Rejected {
        status: 422,
        body_excerpt: "posting closed".into(),
    });
    ledger
        .finish(&key("relmk", "b"), b2, rejected)
        .await
        .expect("finish");
    // Its slot is free again.
    assert!(matches!(
        ledger.claim(capped("e")).await,
        Ok(Claim::Send { .. })
    ));
}

/// `Resend` does nothing for a posting never sent, and re-sends one that was.
pub async fn resend_only_resends(ledger: Ledger) {
    let fresh = key("upwork", "job_never");
    assert_eq!(
        ledger
            .claim(claim_of(&fresh, Intent::Resend))
            .await
            .expect("claim"),
        Claim::Nothing
    );
    let k = key("upwork", "job_resend");
    let (_, original, _) = sent(&ledger, &bid(&k, 450)).await;
    let (_, stored, resend) = sent(&ledger, &claim_of(&k, Intent::Resend)).await;
    assert!(resend);
    assert_eq!(stored, original);
}

/// Each claim starts an attempt row, its finish closes it: the posting's story.
pub async fn attempts_tell_the_story(ledger: Ledger) {
    let k = key("upwork", "job_story");
    let (e1, _, _) = sent(&ledger, &bid(&k, 450)).await;
    ledger.finish(&k, e1, transient()).await.expect("finish");
    let (e2, _, _) = sent(
        &ledger,
        &ClaimRequest {
            instance: "w2".into(),
            trace_id: None,
            ..claim_of(&k, Intent::Resend)
        },
    )
    .await;
    ledger
        .finish(&k, e2, placed("bid-9"))
        .await
        .expect("finish");

    let attempts = ledger.attempts(&k).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    let (first, second) = (&attempts[0], &attempts[1]);
    assert_eq!((first.epoch, first.claim.as_str()), (1, "send"));
    assert_eq!(first.instance, "w1");
    assert_eq!(
        first.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(first.result.as_deref(), Some("transient"));
    assert_eq!(first.http_status, Some(503));
    assert!(first.finished_at.is_some());
    assert_eq!((second.epoch, second.claim.as_str()), (2, "resend"));
    assert_eq!(second.instance, "w2");
    assert_eq!(second.result.as_deref(), Some("placed"));
    assert!(second.started_at >= first.started_at);
}

/// Sent, never recorded, older than the threshold: listed and counted until recorded.
pub async fn unresolved_sends_are_found_until_recorded(ledger: Ledger) {
    let k = key("upwork", "job_lost");
    let (epoch, _, _) = sent(&ledger, &bid(&k, 450)).await;
    let skipped = key("upwork", "job_skipped");
    ledger
        .claim(claim_of(
            &skipped,
            Intent::Skip(vec!["below_min_budget".into()]),
        ))
        .await
        .expect("claim");
    let later = Utc::now() + Duration::seconds(5);

    assert!(
        ledger
            .unresolved(Utc::now() - Duration::hours(1), 10)
            .await
            .expect("unresolved")
            .is_empty()
    );
    let found = ledger.unresolved(later, 10).await.expect("unresolved");
    assert_eq!(
        found.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
        vec![k.clone()]
    );
    assert_eq!(found[0].request, Some(request(&k, 450)));
    assert_eq!(ledger.count_unresolved(later).await.expect("count"), 1);

    ledger
        .finish(&k, epoch, placed("bid-1"))
        .await
        .expect("finish");
    assert_eq!(ledger.count_unresolved(later).await.expect("count"), 0);
}

/// The send states of a posting's attempts, oldest first.
async fn sends_of(ledger: &Ledger, key: &PostingKey) -> Vec<Option<String>> {
    ledger
        .attempts(key)
        .await
        .expect("attempts")
        .into_iter()
        .map(|a| a.send)
        .collect()
}

/// A send is unknown from its claim until its answer says otherwise; only unknown sends are
/// unresolved.
pub async fn each_send_is_unknown_until_its_answer_says_otherwise(ledger: Ledger) {
    let k = key("upwork", "job_states");
    let later = Utc::now() + Duration::seconds(5);
    let (epoch, _, _) = sent(&ledger, &bid(&k, 450)).await;
    let row = ledger.lookup(&k).await.expect("lookup").expect("row");
    assert_eq!(row.unknown_since, row.sent_at, "unknown from the claim on");
    assert_eq!(sends_of(&ledger, &k).await, [Some("unknown".to_owned())]);

    // A 429 proves nothing was created.
    let limited = Finish::pending(bidorch::ledger::Pending::RateLimited);
    ledger.finish(&k, epoch, limited).await.expect("finish");
    let row = ledger.lookup(&k).await.expect("lookup").expect("row");
    assert_eq!(row.unknown_since, None);
    assert_eq!(ledger.count_unresolved(later).await.expect("count"), 0);

    // The resend is unknown again, and a 503 leaves it so.
    let (epoch, _, resend) = sent(&ledger, &bid(&k, 450)).await;
    assert!(resend);
    ledger.finish(&k, epoch, transient()).await.expect("finish");
    let row = ledger.lookup(&k).await.expect("lookup").expect("row");
    assert_eq!(row.unknown_since, row.sent_at, "since the resend");
    assert_eq!(
        sends_of(&ledger, &k).await,
        [Some("not_sent".to_owned()), Some("unknown".to_owned())]
    );
    assert_eq!(ledger.count_unresolved(later).await.expect("count"), 1);
    // No call made (the lease lost before it): nothing changes for the unknown one.
    let (epoch, _, _) = sent(&ledger, &bid(&k, 450)).await;
    let lost = Finish::pending(bidorch::ledger::Pending::LeaseLost);
    ledger.finish(&k, epoch, lost).await.expect("finish");
    let row = ledger.lookup(&k).await.expect("lookup").expect("row");
    let resent_at = ledger.attempts(&k).await.expect("attempts")[1].started_at;
    assert_eq!(
        row.unknown_since,
        Some(resent_at),
        "the resend's fate is still unknown"
    );
    assert_eq!(ledger.count_unresolved(later).await.expect("count"), 1);

    let (epoch, _, _) = sent(&ledger, &bid(&k, 450)).await;
    ledger
        .finish(&k, epoch, placed("bid-7"))
        .await
        .expect("finish");
    let row = ledger.lookup(&k).await.expect("lookup").expect("row");
    assert_eq!((row.state, row.unknown_since), (LedgerState::Placed, None));
    assert_eq!(ledger.count_unresolved(later).await.expect("count"), 0);
}

/// On an API without idempotency keys, a claim of a posting with an unknown send is a lookup:
/// a new epoch, nothing sent; no bid found marks the unknown sends absent and the next claim
/// sends again; a bid found is recorded placed.
pub async fn a_verifying_claim_of_an_unknown_send_is_a_lookup(ledger: Ledger) {
    let verifying = |intent: Intent, k: &PostingKey| ClaimRequest {
        verify: true,
        ..claim_of(k, intent)
    };
    let k = key("freelancer", "38011245");
    let (epoch, stored, _) = sent(&ledger, &verifying(Intent::Bid(request(&k, 450)), &k)).await;
    ledger.finish(&k, epoch, transient()).await.expect("finish");
    let first_sent = ledger.lookup(&k).await.unwrap().unwrap().sent_at;

    // Whatever the intent (the policy would skip now): look up, send nothing.
    let skip = Intent::Skip(vec!["below_min_budget".into()]);
    let Claim::Verify {
        epoch,
        request,
        sent_at,
        ..
    } = ledger.claim(verifying(skip, &k)).await.expect("claim")
    else {
        panic!("a lookup is due");
    };
    assert_eq!((request, sent_at), (stored.clone(), first_sent));
    let row = ledger.lookup(&k).await.unwrap().unwrap();
    assert_eq!((row.epoch, row.sends), (epoch, 1), "nothing was sent");
    // Without idempotency keys the claim does not resend on its own; with them it would.
    let no_bid = Finish::pending(bidorch::ledger::Pending::NoBidFound);
    ledger.finish(&k, epoch, no_bid).await.expect("finish");
    let row = ledger.lookup(&k).await.unwrap().unwrap();
    assert_eq!(row.unknown_since, None, "the lookup found no bid");
    assert_eq!(
        sends_of(&ledger, &k).await,
        [Some("absent".to_owned()), None]
    );
    let (epoch, request, resend) = sent(&ledger, &verifying(Intent::Resend, &k)).await;
    assert!(resend);
    assert_eq!(request, stored, "the same bytes again");
    ledger.finish(&k, epoch, transient()).await.expect("finish");

    let Claim::Verify { epoch, .. } = ledger
        .claim(verifying(Intent::Resend, &k))
        .await
        .expect("claim")
    else {
        panic!("a lookup is due again");
    };
    let found = Finish::Final(FinalOutcome::Found {
        bid_id: "50000001".to_owned(),
    });
    ledger.finish(&k, epoch, found).await.expect("finish");
    let row = ledger.lookup(&k).await.unwrap().unwrap();
    assert_eq!(row.state, LedgerState::Placed);
    assert_eq!(row.bid_id.as_deref(), Some("50000001"));
    assert_eq!(row.detail.as_deref(), Some("found by lookup"));
    assert_eq!((row.sends, row.unknown_since), (2, None));
    let attempts = ledger.attempts(&k).await.expect("attempts");
    let last = attempts.last().expect("the lookup's attempt");
    assert_eq!(
        (
            last.claim.as_str(),
            last.result.as_deref(),
            last.detail.as_deref()
        ),
        ("lookup", Some("found"), Some("bid 50000001"))
    );

    // The same unknown send on an API with idempotency keys: sent again, no lookup.
    let c = key("upwork", "job_keys");
    let (epoch, _, _) = sent(&ledger, &bid(&c, 450)).await;
    ledger.finish(&c, epoch, transient()).await.expect("finish");
    let (_, _, resend) = sent(&ledger, &bid(&c, 450)).await;
    assert!(resend);
}

/// One batch, one call: results in the order asked.
pub async fn a_batch_claims_and_finishes_in_order(ledger: Ledger) {
    let keys: Vec<PostingKey> = ["z", "a", "m", "b"]
        .iter()
        .map(|p| key("upwork", p))
        .collect();
    let mut claims: Vec<ClaimRequest> = keys.iter().map(|k| bid(k, 100)).collect();
    claims[2] = claim_of(&keys[2], Intent::Skip(vec!["below_min_budget".into()]));
    let claimed = ledger.claim_many(&claims).await.expect("claim_many");
    assert_eq!(claimed.len(), 4);
    assert!(matches!(claimed[2], Claim::Skipped { .. }));
    for (i, c) in claimed.iter().enumerate() {
        if i != 2 {
            let Claim::Send { request, .. } = c else {
                panic!("expected a send at {i}: {c:?}");
            };
            assert_eq!(request, &super::contract::request(&keys[i], 100));
        }
    }
    let finishes: Vec<_> = [0, 1, 3]
        .iter()
        .map(|&i| (keys[i].clone(), 1, placed(&format!("bid-{i}"))))
        .collect();
    assert_eq!(
        ledger.finish_many(&finishes).await.expect("finish_many"),
        vec![Fenced::Written; 3]
    );
    let found = ledger.lookup_many(&keys).await.expect("lookup_many");
    assert_eq!(found[3].as_ref().unwrap().bid_id.as_deref(), Some("bid-3"));
    assert_eq!(found[2].as_ref().unwrap().state, LedgerState::Skipped);
}

/// A batch at the cap boundary mixes new and known postings: the slots left go to its new bids
/// and the rest are capped, a posting already sent is re-sent without a slot, a second copy of a
/// new posting in the same batch is a re-send of the first, and a skip takes no slot. Exactly the
/// cap is spent. (The batch is in key order, as the batching layer sends it: which new bids get
/// the last slots is the backend's choice, and both choose by key.)
pub async fn a_batch_at_the_cap_spends_exactly_the_slots_left(ledger: Ledger) {
    let capped = |k: &PostingKey| ClaimRequest {
        daily_cap: Some(3),
        ..bid(k, 100)
    };
    let (a, b, c, d, s) = (
        key("capbatch", "a"),
        key("capbatch", "b"),
        key("capbatch", "c"),
        key("capbatch", "d"),
        key("capbatch", "s"),
    );
    // One slot of three already spent on `a`.
    assert!(matches!(
        ledger.claim(capped(&a)).await.expect("claim a"),
        Claim::Send { resend: false, .. }
    ));
    let batch = vec![
        capped(&a),
        capped(&b),
        capped(&c),
        capped(&c),
        capped(&d),
        claim_of(&s, Intent::Skip(vec!["below_min_budget".into()])),
    ];
    let claimed = ledger.claim_many(&batch).await.expect("claim_many");
    let verdicts: Vec<&str> = claimed
        .iter()
        .map(|c| match c {
            Claim::Send { resend: false, .. } => "send",
            Claim::Send { resend: true, .. } => "resend",
            Claim::Skipped { capped: true, .. } => "capped",
            Claim::Skipped { capped: false, .. } => "skipped",
            Claim::Final(_) => "final",
            Claim::Nothing => "nothing",
            Claim::Verify { .. } => "verify",
        })
        .collect();
    assert_eq!(
        verdicts,
        ["resend", "send", "send", "resend", "capped", "skipped"]
    );
    let found = ledger
        .lookup(&d)
        .await
        .expect("lookup d")
        .expect("d has a row");
    assert_eq!(found.state, LedgerState::Skipped);
    assert_eq!(found.detail.as_deref(), Some("daily_cap"));
    assert!(
        found.request.is_none(),
        "a capped posting stores no request"
    );
    // All three slots are spent: the next new bid is capped.
    assert!(matches!(
        ledger
            .claim(capped(&key("capbatch", "e")))
            .await
            .expect("claim e"),
        Claim::Skipped { capped: true, .. }
    ));
}

/// Finishes and claims made together: the finishes come first, so a claim of a posting that
/// ends in the same call sees it final; each member gets its own answer.
pub async fn finishes_and_claims_of_one_call_read_as_made_in_that_order(ledger: Ledger) {
    let (old, new) = (key("steps", "old"), key("steps", "new"));
    let (epoch, _, _) = sent(&ledger, &bid(&old, 100)).await;
    let (fenced, claimed) = ledger
        .steps_many(
            &[(old.clone(), epoch, placed("bid-old"))],
            &[bid(&new, 100), bid(&old, 100)],
        )
        .await
        .expect("steps_many");
    assert_eq!(fenced, vec![Fenced::Written]);
    assert!(matches!(claimed[0], Claim::Send { resend: false, .. }));
    let Claim::Final(entry) = &claimed[1] else {
        panic!(
            "expected the just-placed posting to be final: {:?}",
            claimed[1]
        );
    };
    assert_eq!(entry.bid_id.as_deref(), Some("bid-old"));
}

/// Counts cover every state, zero included.
pub async fn counts_by_state_counts_every_state(ledger: Ledger) {
    let p = key("upwork", "job_p");
    let (e, _, _) = sent(&ledger, &bid(&p, 1)).await;
    ledger.finish(&p, e, placed("b")).await.expect("finish");
    ledger
        .claim(claim_of(
            &key("upwork", "job_s"),
            Intent::Skip(vec!["x".into()]),
        ))
        .await
        .expect("claim");
    sent(&ledger, &bid(&key("upwork", "job_pending"), 1)).await;
    let counts = ledger.counts_by_state().await.expect("counts");
    assert_eq!(
        counts,
        vec![
            (LedgerState::Pending, 1),
            (LedgerState::Placed, 1),
            (LedgerState::Skipped, 1),
            (LedgerState::Rejected, 0),
        ]
    );
}

/// A finish for a posting never claimed is an error, not a silent success.
pub async fn a_finish_without_a_claim_is_an_error(ledger: Ledger) {
    let err = ledger
        .finish(&key("upwork", "job_ghost"), 1, placed("b"))
        .await
        .expect_err("never claimed");
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err}");
}

/// The backend answers its health check.
pub async fn health_answers(ledger: Ledger) {
    ledger.health().await.expect("healthy");
}

/// A pause holds its scopes until resumed or its `until`, each change bumps the generation, and
/// every change is in the audit history with who and why.
pub async fn pauses_are_durable_audited_and_counted(ledger: Ledger) {
    let c = &ledger.controls;
    let start = c.pause_state().await.expect("state");
    assert!(start.pauses.is_empty());
    let upwork = Scope::Marketplace("upwork".into());
    let g1 = c
        .pause(
            std::slice::from_ref(&upwork),
            "contract talks",
            "ana@ops",
            None,
        )
        .await
        .expect("pause");
    assert!(g1 > start.generation);
    let later = Utc::now() + Duration::minutes(30);
    let g2 = c
        .pause(&[Scope::All], "incident 42", "loopback", Some(later))
        .await
        .expect("pause all");
    assert!(g2 > g1);
    // An expired one is not in force.
    c.pause(
        &[Scope::Marketplace("toptal".into())],
        "over",
        "ana@ops",
        Some(Utc::now() - Duration::seconds(1)),
    )
    .await
    .expect("pause");
    let state = c.pause_state().await.expect("state");
    let scopes: Vec<&Scope> = state.pauses.iter().map(|p| &p.scope).collect();
    assert_eq!(
        scopes,
        [&Scope::All, &upwork],
        "the expired pause is not in force"
    );
    assert_eq!(
        state
            .pause_of("freelancer", Utc::now())
            .map(|p| p.reason.as_str()),
        Some("incident 42")
    );

    let (g3, ended) = c.resume(&[Scope::All], "bo@ops").await.expect("resume");
    assert!(g3 > g2);
    assert_eq!(ended.len(), 3, "--all ends every pause: {ended:?}");
    let state = c.pause_state().await.expect("state");
    assert!(state.pauses.is_empty());
    assert_eq!(state.generation, g3);

    let history = c.history(10).await.expect("history");
    let story: Vec<(String, Option<String>, String)> = history
        .iter()
        .map(|a| (a.action.clone(), a.scope.clone(), a.who.clone()))
        .collect();
    assert_eq!(
        story,
        [
            ("resume".into(), Some("*".into()), "bo@ops".into()),
            ("pause".into(), Some("toptal".into()), "ana@ops".into()),
            ("pause".into(), Some("*".into()), "loopback".into()),
            ("pause".into(), Some("upwork".into()), "ana@ops".into()),
        ]
    );
    assert_eq!(history[2].reason.as_deref(), Some("incident 42"));
    assert!(history[2].until.is_some());
    assert!(
        history[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("upwork")),
        "the resume says what it ended: {:?}",
        history[0].detail
    );
}

/// Each worker's latest report replaces its previous one; `workers` lists those seen lately.
pub async fn workers_report_themselves(ledger: Ledger) {
    let c = &ledger.controls;
    let beat = |instance: &str, generation: i64| WorkerBeat {
        instance: instance.to_owned(),
        host: "node-1".to_owned(),
        version: "1.2.3".to_owned(),
        started_at: Utc::now() - Duration::minutes(5),
        generation,
        in_flight: 7,
        auto_paused: vec!["upwork:credentials".to_owned()],
    };
    c.report(&beat("w1", 1)).await.expect("report");
    c.report(&beat("w2", 1)).await.expect("report");
    c.report(&beat("w1", 2)).await.expect("report again");
    let seen = c
        .workers(Utc::now() - Duration::seconds(30))
        .await
        .expect("workers");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].beat.instance, "w1");
    assert_eq!(seen[0].beat.generation, 2, "the latest report");
    assert_eq!(seen[0].beat.auto_paused, ["upwork:credentials"]);
    assert_eq!(seen[0].beat.in_flight, 7);
    assert!(
        c.workers(Utc::now() + Duration::seconds(30))
            .await
            .expect("workers")
            .is_empty(),
        "not seen since"
    );
}

/// The console's search: by key prefix (wildcards taken literally), state, reason and time;
/// placed_since counts today's bids.
pub async fn search_finds_postings_by_prefix_state_and_reason(ledger: Ledger) {
    for id in ["job_1", "job_10", "jobx1", "other"] {
        let k = key("upwork", id);
        let (epoch, _, _) = sent(&ledger, &bid(&k, 450)).await;
        ledger
            .finish(&k, epoch, placed(&format!("b-{id}")))
            .await
            .expect("finish");
    }
    let skipped = key("toptal", "job_9");
    ledger
        .claim(claim_of(
            &skipped,
            Intent::Skip(vec!["blocked_keyword:crypto".into()]),
        ))
        .await
        .expect("claim");
    let found = |s: Search| {
        let ledger = ledger.clone();
        async move {
            let mut keys: Vec<String> = ledger
                .search(&Search { limit: 50, ..s })
                .await
                .expect("search")
                .into_iter()
                .map(|e| e.key.to_string())
                .collect();
            keys.sort();
            keys
        }
    };
    assert_eq!(
        found(Search {
            marketplace: Some("upwork".into()),
            id_prefix: Some("job_1".into()),
            ..Search::default()
        })
        .await,
        ["upwork:job_1", "upwork:job_10"],
        "`_` is a character, not a wildcard"
    );
    assert_eq!(
        found(Search {
            state: Some(LedgerState::Skipped),
            reason: Some("CRYPTO".into()),
            ..Search::default()
        })
        .await,
        ["toptal:job_9"]
    );
    assert!(
        found(Search {
            since: Some(Utc::now() + Duration::minutes(1)),
            ..Search::default()
        })
        .await
        .is_empty()
    );
    let page = ledger
        .search(&Search {
            limit: 2,
            offset: 4,
            ..Search::default()
        })
        .await
        .expect("search");
    assert_eq!(page.len(), 1, "five rows, the last page");
    let placed = ledger
        .placed_since(Utc::now() - Duration::hours(1))
        .await
        .expect("placed");
    assert_eq!(placed, [("upwork".to_owned(), 4)]);
}

/// A bid with its credit budget.
fn budgeted(key: &PostingKey, credits: i64, cost: Decimal) -> ClaimRequest {
    ClaimRequest {
        budget: Some(bidorch::ledger::BudgetClaim {
            period_start: today(),
            credits: Decimal::from(credits),
            cost,
        }),
        ..bid(key, 450)
    }
}

/// Concurrent claims never spend more than the period's credits (costs of their own, exact
/// decimals); a skip names every limit that binds; a rejection gives back exactly its cost.
pub async fn a_credit_budget_is_exact_and_a_rejection_gives_back_its_cost(ledger: Ledger) {
    // 10 credits, bids of 1.5 each: six fit (9.0), the seventh would make 10.5.
    let keys: Vec<PostingKey> = (0..20)
        .map(|i| key("upwork", &format!("b{i:02}")))
        .collect();
    let claims = keys.iter().map(|k| {
        let ledger = ledger.clone();
        let claim = budgeted(k, 10, Decimal::new(15, 1));
        async move { ledger.claim(claim.clone()).await.expect("claim") }
    });
    let claimed = futures_join_all(claims).await;
    let sent: Vec<usize> = claimed
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Claim::Send { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(sent.len(), 6, "10 credits hold six bids of 1.5");
    for c in &claimed {
        if let Claim::Skipped { reasons, capped } = c {
            assert!(capped);
            assert_eq!(reasons, &["budget_exhausted"]);
        }
    }
    // A cheap bid still fits in what is left (1.0 of 10 - 9.0).
    let cheap = key("upwork", "cheap");
    assert!(matches!(
        ledger
            .claim(budgeted(&cheap, 10, Decimal::ONE))
            .await
            .unwrap(),
        Claim::Send { .. }
    ));
    // Both limits bind: both reasons.
    let both = key("upwork", "both");
    let claim = ClaimRequest {
        daily_cap: Some(0),
        ..budgeted(&both, 10, Decimal::ONE)
    };
    let Claim::Skipped { reasons, .. } = ledger.claim(claim.clone()).await.unwrap() else {
        panic!("skipped");
    };
    assert_eq!(reasons, ["budget_exhausted", "daily_cap"]);

    // A rejection gives back its 1.5: another bid of 1.5 fits again, one more does not.
    let first = &keys[sent[0]];
    let epoch = ledger.lookup(first).await.unwrap().unwrap().epoch;
    let rejected = Finish::Final(FinalOutcome::Rejected {
        status: 422,
        body_excerpt: "closed".into(),
    });
    ledger.finish(first, epoch, rejected).await.expect("finish");
    let again = key("upwork", "again");
    assert!(matches!(
        ledger
            .claim(budgeted(&again, 10, Decimal::new(15, 1)))
            .await
            .unwrap(),
        Claim::Send { .. }
    ));
    let over = key("upwork", "over");
    assert!(
        matches!(
            ledger
                .claim(budgeted(&over, 10, Decimal::new(1, 2)))
                .await
                .unwrap(),
            Claim::Skipped { .. }
        ),
        "10.00 spent: not even 0.01 more"
    );
    // Another marketplace has a pool of its own.
    let other = key("toptal", "t1");
    assert!(matches!(
        ledger
            .claim(budgeted(&other, 10, Decimal::new(15, 1)))
            .await
            .unwrap(),
        Claim::Send { .. }
    ));
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// Retention deletes final rows (oldest outcome first, a batch at a time) with their attempts
/// and the side tables' old rows; a pending row — an unknown send, a Retry-After — never. The
/// rows are made now and pruned with a cutoff in the future: what a row past the window sees.
pub async fn retention_prunes_final_rows_and_their_attempts_never_pending_ones(ledger: Ledger) {
    let placed_key = key("upwork", "old_placed");
    let (epoch, _, _) = sent(&ledger, &bid(&placed_key, 300)).await;
    ledger
        .finish(&placed_key, epoch, placed("bid-old"))
        .await
        .expect("finish");
    let skipped_key = key("upwork", "old_skipped");
    ledger
        .claim(claim_of(
            &skipped_key,
            Intent::Skip(vec!["below_min_budget".into()]),
        ))
        .await
        .expect("skip");
    let rejected_key = key("fiverr", "old_rejected");
    let (epoch, _, _) = sent(&ledger, &bid(&rejected_key, 300)).await;
    ledger
        .finish(
            &rejected_key,
            epoch,
            Finish::Final(FinalOutcome::Rejected {
                status: 422,
                body_excerpt: "closed".to_owned(),
            }),
        )
        .await
        .expect("finish");
    let unknown_key = key("upwork", "old_unknown");
    sent(&ledger, &bid(&unknown_key, 300)).await;
    let waiting_key = key("upwork", "old_waiting");
    let (epoch, _, _) = sent(&ledger, &bid(&waiting_key, 300)).await;
    ledger
        .finish(&waiting_key, epoch, transient())
        .await
        .expect("finish");
    ledger
        .controls
        .pause(
            &[Scope::Marketplace("upwork".into())],
            "old pause",
            "ana@ops",
            None,
        )
        .await
        .expect("an audit entry");

    let past = Utc::now() - Duration::hours(1);
    let future = Utc::now() + Duration::seconds(5);
    let size = ledger.size().await.expect("size");
    let count = |state: LedgerState| {
        size.by_state
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, n)| *n)
    };
    assert_eq!(count(LedgerState::Pending), Some(2));
    assert_eq!(count(LedgerState::Placed), Some(1));
    assert!(!size.estimated, "a small ledger is counted");
    let oldest = size.oldest_final.expect("the oldest final row");
    assert!(oldest <= Utc::now() && oldest > past, "{oldest}");

    assert_eq!(
        ledger.prunable(past).await.expect("prunable").total(),
        0,
        "nothing is past a window that ended an hour ago"
    );
    let would = ledger.prunable(future).await.expect("prunable");
    assert_eq!((would.postings, would.attempts), (3, 3), "{would:?}");
    assert!(would.other >= 1, "the audit entry: {would:?}");

    let first = ledger.prune(future, 2).await.expect("prune").expect("ours");
    assert_eq!(first.postings, 2, "a batch at most: {first:?}");
    let second = ledger.prune(future, 2).await.expect("prune").expect("ours");
    assert_eq!(second.postings, 1, "{second:?}");
    let third = ledger.prune(future, 2).await.expect("prune").expect("ours");
    assert_eq!(third.postings + third.attempts, 0, "{third:?}");
    assert_eq!(
        first.attempts + second.attempts,
        3,
        "every pruned posting's attempts went with it"
    );
    assert!(first.other + second.other >= 1);

    for gone in [&placed_key, &skipped_key, &rejected_key] {
        assert!(
            ledger.lookup(gone).await.expect("lookup").is_none(),
            "{gone}"
        );
        assert!(ledger.attempts(gone).await.expect("attempts").is_empty());
    }
    for kept in [&unknown_key, &waiting_key] {
        let row = ledger.lookup(kept).await.expect("lookup").expect("kept");
        assert_eq!(row.state, LedgerState::Pending, "{kept}");
        assert_eq!(ledger.attempts(kept).await.expect("attempts").len(), 1);
    }
    assert_eq!(ledger.size().await.expect("size").oldest_final, None);
    assert_eq!(ledger.prunable(future).await.expect("prunable").total(), 0);
}

/// A send the marketplace said to retry later (a Retry-After) is not unresolved while its
/// message is coming back: reconcile leaves it to the message.
pub async fn a_send_waiting_out_a_retry_after_is_left_to_its_message(ledger: Ledger) {
    let k = key("upwork", "job_back_later");
    let (epoch, _, _) = sent(&ledger, &bid(&k, 450)).await;
    ledger
        .finish(
            &k,
            epoch,
            Finish::Pending {
                reason: bidorch::ledger::Pending::Transient,
                http_status: Some(503),
                detail: Some("HTTP 503".to_owned()),
                back_at: Some(Utc::now() + Duration::minutes(10)),
            },
        )
        .await
        .expect("finish");
    let later = Utc::now() + Duration::seconds(5);
    assert_eq!(ledger.count_unresolved(later).await.expect("count"), 0);
    assert!(
        ledger
            .unresolved(later, 10)
            .await
            .expect("unresolved")
            .is_empty()
    );
}

/// Texts that SQL quoting gets wrong (quotes, backslashes, dollar quotes, array braces and
/// commas, comment and statement markers, line breaks, non-ASCII) come back exactly as they went
/// in, through every column a claim and a finish write, on a posting's first claim and on a later
/// one; a bid body with and without the tag the PostgreSQL ledger dollar-quotes long texts with.
pub async fn every_text_is_stored_exactly_as_it_was_given(ledger: Ledger) {
    let odd = |n: u32| {
        // Even ones hold the tag.
        let tag = if n.is_multiple_of(2) {
            "$bidorch_text$"
        } else {
            "$bidorch_text"
        };
        format!(
            "it's {n} \\ \\' '' \"q\" {{a,NULL}} $$ $q$ {tag} E'\\n' ; -- /* é 🦀\r\n\t\\000 */ $"
        )
    };
    let k = key("upwork", "job_odd_text");
    let terms = BidTerms {
        amount: Decimal::from(5),
        currency: "USD".to_owned(),
        cover_letter: odd(1),
    };
    let request = contract::stored_request(&k, &terms);
    let first = ClaimRequest {
        event_id: odd(2),
        instance: odd(3),
        trace_id: Some(odd(4)),
        trace_parent: Some(odd(5)),
        ..claim_of(&k, Intent::Bid(request.clone()))
    };
    let (e1, sent_request, _) = sent(&ledger, &first).await;
    assert_eq!(sent_request, request);
    let pending = Finish::Pending {
        reason: bidorch::ledger::Pending::Transient,
        http_status: Some(503),
        detail: Some(odd(6)),
        back_at: None,
    };
    ledger.finish(&k, e1, pending).await.expect("finish");
    let again = ClaimRequest {
        event_id: odd(7),
        ..first.clone()
    };
    let (e2, resent, resend) = sent(&ledger, &again).await;
    assert_eq!((resent, resend), (request.clone(), true));
    ledger
        .finish(&k, e2, placed(&odd(8)))
        .await
        .expect("finish");

    let entry = ledger.lookup(&k).await.expect("lookup").expect("row");
    assert_eq!(entry.request, Some(request));
    assert_eq!(entry.event_id, odd(7));
    assert_eq!(entry.trace_parent, Some(odd(5)));
    assert_eq!(entry.bid_id, Some(odd(8)));
    let attempts = ledger.attempts(&k).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        (attempts[0].instance.as_str(), attempts[0].event_id.as_str()),
        (odd(3).as_str(), odd(2).as_str())
    );
    assert_eq!(attempts[0].trace_id, Some(odd(4)));
    assert_eq!(attempts[0].detail, Some(odd(6)));

    let skipped = key("upwork", "job_odd_skip");
    let skip = ClaimRequest {
        event_id: odd(9),
        ..claim_of(&skipped, Intent::Skip(vec![odd(10), odd(11)]))
    };
    ledger.claim(skip).await.expect("claim");
    let entry = ledger.lookup(&skipped).await.expect("lookup").expect("row");
    assert_eq!(entry.detail, Some(format!("{},{}", odd(10), odd(11))));
    assert_eq!(entry.event_id, odd(9));

    let tagged = key("upwork", "job_odd_tag");
    let terms = BidTerms {
        cover_letter: odd(12),
        ..terms
    };
    let request = contract::stored_request(&tagged, &terms);
    let (_, sent_request, _) =
        sent(&ledger, &claim_of(&tagged, Intent::Bid(request.clone()))).await;
    assert_eq!(sent_request, request);
    let entry = ledger.lookup(&tagged).await.expect("lookup").expect("row");
    assert_eq!(entry.request, Some(request));
}
