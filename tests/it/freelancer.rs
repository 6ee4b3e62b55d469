//! The Freelancer API adapter against the sandbox's Freelancer dialect, over real HTTP: the
//! request in the API's words (bidder from `/self`, the amount as the decimal's own digits), the
//! answers classified, lookups that filter by bidder and page through a list that changes, and
//! the live credentials check.

use std::collections::BTreeMap;
use std::time::Duration;

use bidorch::config::{MarketplaceApi, MarketplaceSettings};
use bidorch::marketplace::sandbox::{Fault, SANDBOX_BIDDER_ID, SandboxOptions, SandboxServer};
use bidorch::marketplace::{
    BidRequest, BidResult, BidTerms, HttpMarketplace, Lookup, LookupRequest, Marketplace,
    RequestRefusal,
};
use bidorch::posting::PostingKey;
use rust_decimal::Decimal;

const TOKEN: &str = "fl-token-77c1";

/// A sandbox that wants `TOKEN`, with `options` otherwise.
async fn sandbox(options: SandboxOptions) -> SandboxServer {
    SandboxServer::start(SandboxOptions {
        token: Some(TOKEN.to_owned()),
        ..options
    })
    .await
    .expect("the sandbox starts")
}

/// A client for marketplace `fl` on `server`'s Freelancer dialect, presenting `token`.
fn client(server: &SandboxServer, token: &str, bidder_id: Option<u64>) -> HttpMarketplace {
    let base = url::Url::parse(&format!("{}/fl", server.url())).unwrap();
    let settings = MarketplaceSettings {
        api: MarketplaceApi::Freelancer,
        bidder_id,
        timeout: Some(Duration::from_secs(5)),
        ..MarketplaceSettings::new(base, "FL_TOKEN")
    };
    let token = token.to_owned();
    HttpMarketplace::new(
        &BTreeMap::from([("fl".to_owned(), settings)]),
        Duration::from_secs(30),
        move |_| Some(token.clone()),
    )
    .expect("a valid marketplace")
}

fn key(project: &str) -> PostingKey {
    PostingKey::new("fl", project).unwrap()
}

fn terms(amount: Decimal) -> BidTerms {
    BidTerms {
        amount,
        currency: "USD".to_owned(),
        cover_letter: "I have built this \"before\".".to_owned(),
    }
}

async fn place(client: &HttpMarketplace, key: &PostingKey, amount: Decimal) -> BidResult {
    let stored = client
        .request_for(key, &terms(amount))
        .await
        .expect("configured")
        .expect("a project id");
    client
        .place_bid(&BidRequest {
            key: key.clone(),
            api: stored.api,
            body: stored.body,
            trace_headers: BTreeMap::new(),
        })
        .await
        .expect("configured")
}

async fn find(client: &HttpMarketplace, key: &PostingKey) -> Lookup {
    client
        .find_bid(&LookupRequest {
            key: key.clone(),
            trace_headers: BTreeMap::new(),
        })
        .await
        .expect("configured")
}

#[tokio::test]
async fn a_bid_goes_out_in_the_apis_words_with_the_bidder_from_self() {
    let server = sandbox(SandboxOptions::default()).await;
    let client = client(&server, TOKEN, None);
    let k = key("38011245");
    let stored = client
        .request_for(&k, &terms(Decimal::new(4501, 1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.api, "freelancer");
    assert_eq!(
        stored.body,
        format!(
            r#"{{"project_id":38011245,"bidder_id":{SANDBOX_BIDDER_ID},"amount":450.10,"period":7,"milestone_percentage":100,"description":"I have built this \"before\"."}}"#
        ),
        "integers as integers, the amount as the decimal's own digits"
    );
    let placed = place(&client, &k, Decimal::new(4501, 1)).await;
    let BidResult::Placed {
        bid_id,
        replay: false,
    } = placed
    else {
        panic!("placed: {placed:?}");
    };
    let bids = server.sandbox().bids(&k);
    assert_eq!(bids.len(), 1);
    assert_eq!(bids[0].bid_id, bid_id);
    assert_eq!(bids[0].amount, "450.10", "exactly as written");
    assert!(
        bid_id.parse::<u64>().is_ok(),
        "Freelancer's ids are integers"
    );
}

#[tokio::test]
async fn a_posting_id_that_is_no_project_id_gets_no_request() {
    let server = sandbox(SandboxOptions::default()).await;
    let client = client(&server, TOKEN, None);
    for id in ["job_1", "0", "012", "1e3", "99999999999999999999"] {
        let refused = client
            .request_for(&key(id), &terms(Decimal::new(100, 0)))
            .await
            .unwrap();
        assert_eq!(
            refused,
            Err(RequestRefusal::Unsupported("posting_id_unsupported")),
            "{id}"
        );
    }
    assert_eq!(server.sandbox().stats().requests, 0);
}

#[tokio::test]
async fn a_refused_token_leaves_the_bidder_unknown_without_showing_the_token() {
    let server = sandbox(SandboxOptions::default()).await;
    let client = client(&server, "not-the-token", None);
    let refused = client
        .request_for(&key("5"), &terms(Decimal::new(100, 0)))
        .await
        .unwrap();
    let Err(RequestRefusal::Unavailable(why)) = refused else {
        panic!("the bidder cannot be learnt: {refused:?}");
    };
    assert!(why.contains("FL_TOKEN") && why.contains("401"), "{why}");
    assert!(!why.contains("not-the-token"), "{why}");
    let check = client.check("fl").await.unwrap();
    assert!(!check.ok, "{check:?}");
}

#[tokio::test]
async fn a_configured_bidder_id_is_used_and_checked_against_the_token() {
    let server = sandbox(SandboxOptions::default()).await;
    let right = client(&server, TOKEN, Some(SANDBOX_BIDDER_ID));
    let check = right.check("fl").await.unwrap();
    assert!(check.ok && check.detail.contains("4242"), "{check:?}");
    let wrong = client(&server, TOKEN, Some(17));
    let check = wrong.check("fl").await.unwrap();
    assert!(!check.ok && check.detail.contains("17"), "{check:?}");
    // Bidding as someone else is the marketplace's refusal of our credentials, not the posting's.
    let placed = place(&wrong, &key("6"), Decimal::new(100, 0)).await;
    assert_eq!(placed, BidResult::Unauthorized { status: 403 });
}

#[tokio::test]
async fn a_lookup_finds_ours_among_rivals_on_any_page() {
    for rivals in [0, 3, 99, 100, 101, 250] {
        let server = sandbox(SandboxOptions {
            rival_bids: rivals,
            ..SandboxOptions::default()
        })
        .await;
        let client = client(&server, TOKEN, None);
        let k = key("700");
        assert_eq!(find(&client, &k).await, Lookup::NotFound, "{rivals} rivals");
        let BidResult::Placed { bid_id, .. } = place(&client, &k, Decimal::new(100, 0)).await
        else {
            panic!("placed");
        };
        assert_eq!(
            find(&client, &k).await,
            Lookup::Found { bid_id },
            "{rivals} rivals"
        );
    }
}

#[tokio::test]
async fn a_lookup_misses_nothing_while_the_list_changes_between_pages() {
    // 30 delisted per page: within the pages' overlap. 80: beyond it — the pass starts again.
    for churn in [30, 80] {
        let server = sandbox(SandboxOptions {
            rival_bids: 260,
            lookup_churn: churn,
            ..SandboxOptions::default()
        })
        .await;
        let client = client(&server, TOKEN, None);
        let k = key("701");
        let BidResult::Placed { bid_id, .. } = place(&client, &k, Decimal::new(100, 0)).await
        else {
            panic!("placed");
        };
        assert_eq!(
            find(&client, &k).await,
            Lookup::Found { bid_id },
            "{churn} delisted per page"
        );
    }
}

#[tokio::test]
async fn lookups_tell_gone_from_unanswered() {
    let server = sandbox(SandboxOptions::default()).await;
    let client = client(&server, TOKEN, None);
    let k = key("702");
    server.sandbox().set_outage(Some(Fault::unavailable()));
    assert!(
        matches!(
            find(&client, &k).await,
            Lookup::Unanswered {
                status: Some(503),
                ..
            }
        ),
        "a 5xx is no answer"
    );
    server.sandbox().set_outage(None);
    server.sandbox().set_token(Some("rotated".to_owned()));
    assert!(
        matches!(
            find(&client, &k).await,
            Lookup::Unanswered {
                status: Some(401),
                ..
            }
        ),
        "a refused token is no answer"
    );
    server.sandbox().set_token(Some(TOKEN.to_owned()));
    server.sandbox().close_project(&k);
    assert_eq!(find(&client, &k).await, Lookup::Gone);
    let placed = place(&client, &k, Decimal::new(100, 0)).await;
    assert!(
        matches!(placed, BidResult::Rejected { status: 404, .. }),
        "{placed:?}"
    );
}

#[tokio::test]
async fn a_lost_answer_is_transient_and_a_second_bid_is_refused() {
    let server = sandbox(SandboxOptions::default()).await;
    let client = client(&server, TOKEN, None);
    let k = key("703");
    server.sandbox().lose_next_responses(1);
    let lost = place(&client, &k, Decimal::new(100, 0)).await;
    assert!(
        matches!(
            lost,
            BidResult::Transient {
                status: Some(502),
                reached: true,
                ..
            }
        ),
        "{lost:?}"
    );
    let again = place(&client, &k, Decimal::new(100, 0)).await;
    assert!(
        matches!(again, BidResult::Rejected { status: 400, .. }),
        "Freelancer refuses a second bid by the same bidder: {again:?}"
    );
    assert_eq!(server.sandbox().bids(&k).len(), 1);
    assert!(matches!(find(&client, &k).await, Lookup::Found { .. }));
}
