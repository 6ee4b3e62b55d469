//! The HTTP marketplace client against the sandbox marketplace, over real HTTP on 127.0.0.1
//! port 0: response classification, headers on the wire, idempotency under concurrency, trace
//! propagation, secrets, and the sandbox's own contract checks and stats.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bidorch::config::MarketplaceSettings;
use bidorch::marketplace::sandbox::{self, Bid, Fault, Sandbox, SandboxOptions, SandboxStats};
use bidorch::marketplace::{BidRequest, BidResult, HttpMarketplace, Marketplace, MarketplaceError};
use bidorch::posting::PostingKey;
use rust_decimal::Decimal;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The lease TTL the clients are sized for (their timeouts are explicit here).
const LEASE: Duration = Duration::from_secs(30);
const TOKEN: &str = "sandbox-token-5f3a";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A sandbox served on an ephemeral port until dropped or stopped.
struct RunningSandbox {
    sandbox: Sandbox,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningSandbox {
    async fn start(options: SandboxOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sandbox = Sandbox::new(options);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sandbox::serve(listener, sandbox.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            sandbox,
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn base_url(&self, marketplace: &str) -> String {
        format!("http://{}/{marketplace}", self.addr)
    }

    /// A client for `upwork` on this sandbox with the given token and timeout.
    fn client(&self, token: &str, timeout: Duration) -> HttpMarketplace {
        let token = token.to_owned();
        HttpMarketplace::new(
            &settings(&[("upwork", &self.base_url("upwork"), timeout)]),
            LEASE,
            move |var| (var == "BIDORCH_UPWORK_TOKEN").then(|| token.clone()),
        )
        .unwrap()
    }

    async fn stats_over_http(&self) -> SandboxStats {
        crate::support::http_get(format!("http://{}/v1/stats", self.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn bids_over_http(&self, marketplace: &str, posting_id: &str) -> Vec<Bid> {
        let mut url = url::Url::parse(&format!("http://{}/v1/bids", self.addr)).unwrap();
        url.path_segments_mut()
            .unwrap()
            .extend([marketplace, posting_id]);
        crate::support::http_get(url)
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn settings(entries: &[(&str, &str, Duration)]) -> BTreeMap<String, MarketplaceSettings> {
    entries
        .iter()
        .map(|(name, base_url, timeout)| {
            (
                name.to_string(),
                MarketplaceSettings {
                    timeout: Some(*timeout),
                    connect_timeout: Some(Duration::from_secs(2)),
                    ..MarketplaceSettings::new(
                        url::Url::parse(base_url).unwrap(),
                        format!("BIDORCH_{}_TOKEN", name.to_uppercase()),
                    )
                },
            )
        })
        .collect()
}

fn bid(marketplace: &str, posting_id: &str) -> BidRequest {
    bid_of(marketplace, posting_id, Decimal::new(450, 0))
}

fn bid_of(marketplace: &str, posting_id: &str, amount: Decimal) -> BidRequest {
    let key = PostingKey::new(marketplace, posting_id).unwrap();
    let terms = bidorch::marketplace::BidTerms {
        amount,
        currency: "USD".to_owned(),
        cover_letter: "I have built this before.".to_owned(),
    };
    let stored = bidorch::marketplace::contract::stored_request(&key, &terms);
    BidRequest {
        key,
        api: stored.api,
        body: stored.body,
        trace_headers: BTreeMap::new(),
    }
}

const PATIENT: Duration = Duration::from_secs(5);

/// Posts a bid directly, as another client would, with its own idempotency key.
async fn post_raw(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut request = crate::support::client()
        .post(format!("http://{addr}{path}"))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

const GOOD_BODY: &str =
    r#"{"posting_id":"job_1","amount":{"value":"450.00","currency":"USD"},"cover_letter":"hi"}"#;

fn placed(result: &BidResult) -> (&str, bool) {
    match result {
        BidResult::Placed { bid_id, replay } => (bid_id, *replay),
        other => panic!("expected Placed, got {other:?}"),
    }
}

#[tokio::test]
async fn new_bid_is_placed() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let client = s.client(TOKEN, PATIENT);

    let result = client.place_bid(&bid("upwork", "job_1")).await.unwrap();

    let (bid_id, replay) = placed(&result);
    assert!(!replay);
    let key = PostingKey::new("upwork", "job_1").unwrap();
    assert_eq!(s.sandbox.bids(&key)[0].bid_id, bid_id);
    assert_eq!(s.sandbox.stats().bids_created, 1);
}

#[tokio::test]
async fn same_idempotency_key_again_is_a_replay_of_the_same_bid() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let client = s.client(TOKEN, PATIENT);

    let first = client.place_bid(&bid("upwork", "job_1")).await.unwrap();
    let again = client.place_bid(&bid("upwork", "job_1")).await.unwrap();

    assert!(!placed(&first).1);
    assert_eq!(placed(&again), (placed(&first).0, true));
    let stats = s.sandbox.stats();
    assert_eq!((stats.bids_created, stats.replays), (1, 1));
}

#[tokio::test]
async fn a_replay_with_a_different_body_is_refused_as_stripe_does() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let client = s.client(TOKEN, PATIENT);
    placed(&client.place_bid(&bid("upwork", "job_1")).await.unwrap());

    // Same idempotency key, another amount: not a replay, a conflicting request.
    let changed = bid_of("upwork", "job_1", Decimal::new(300, 0));
    let result = client.place_bid(&changed).await.unwrap();

    let BidResult::Rejected {
        status,
        body_excerpt,
    } = &result
    else {
        panic!("expected a 422, got {result:?}");
    };
    assert_eq!(*status, 422);
    assert!(
        body_excerpt.contains("different request body"),
        "{body_excerpt}"
    );
    assert_eq!(s.sandbox.stats().bids_created, 1);
    // The same bytes again are still a replay.
    assert!(placed(&client.place_bid(&bid("upwork", "job_1")).await.unwrap()).1);
}

#[tokio::test]
async fn bid_under_another_key_is_already_placed() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let other = post_raw(
        s.addr,
        "/upwork/v1/postings/job_1/bids",
        &[
            ("authorization", "Bearer someone"),
            ("idempotency-key", "another-client-key"),
            ("content-type", "application/json"),
        ],
        GOOD_BODY,
    )
    .await;
    assert_eq!(other.status(), 201);

    let result = s
        .client(TOKEN, PATIENT)
        .place_bid(&bid("upwork", "job_1"))
        .await
        .unwrap();

    let BidResult::AlreadyPlaced { detail, .. } = result else {
        panic!("expected AlreadyPlaced, got {result:?}");
    };
    assert!(detail.contains("already exists"), "{detail}");
    let stats = s.sandbox.stats();
    assert_eq!((stats.bids_created, stats.conflicts), (1, 1));
    assert_eq!(stats.postings["upwork:job_1"].bids, 1);
}

#[tokio::test]
async fn rate_limit_with_retry_after_seconds_is_a_rate_limit_with_the_delay() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    s.sandbox.fail_next(Fault::rate_limited("7"));
    let client = s.client(TOKEN, PATIENT);

    let result = client.place_bid(&bid("upwork", "job_1")).await.unwrap();

    assert_eq!(
        result,
        BidResult::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        }
    );
    assert_eq!(s.sandbox.stats().bids_created, 0);
    // The fault was the only one: the retry places the bid.
    let retry = client.place_bid(&bid("upwork", "job_1")).await.unwrap();
    assert!(!placed(&retry).1);
}

#[tokio::test]
async fn rate_limit_with_retry_after_http_date_is_a_rate_limit_with_the_delay() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let at = chrono::Utc::now() + chrono::TimeDelta::seconds(30);
    s.sandbox.fail_next(Fault::rate_limited(
        at.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
    ));

    let result = s
        .client(TOKEN, PATIENT)
        .place_bid(&bid("upwork", "job_1"))
        .await
        .unwrap();

    let BidResult::RateLimited {
        retry_after: Some(delay),
    } = result
    else {
        panic!("expected RateLimited with retry_after, got {result:?}");
    };
    // The date has whole seconds and was written before the call: a little under 30 s.
    assert!(
        delay <= Duration::from_secs(30) && delay > Duration::from_secs(20),
        "{delay:?}"
    );
}

#[tokio::test]
async fn service_unavailable_is_transient() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    s.sandbox.fail_next(Fault::unavailable());

    let result = s
        .client(TOKEN, PATIENT)
        .place_bid(&bid("upwork", "job_1"))
        .await
        .unwrap();

    assert_eq!(
        result,
        BidResult::Transient {
            reason: "HTTP 503".into(),
            retry_after: None,
            status: Some(503),
            reached: true,
        }
    );
}

#[tokio::test]
async fn answer_slower_than_the_timeout_is_transient_and_the_retry_replays() {
    // The sandbox records the bid, then answers after 1.5 s; the client waits 0.5 s.
    let s = RunningSandbox::start(SandboxOptions {
        latency: Duration::from_millis(1500),
        ..SandboxOptions::default()
    })
    .await;
    let impatient = s.client(TOKEN, Duration::from_millis(500));

    let result = impatient.place_bid(&bid("upwork", "job_1")).await.unwrap();

    let BidResult::Transient { reason, .. } = &result else {
        panic!("expected Transient, got {result:?}");
    };
    assert!(reason.starts_with("timeout"), "{reason}");
    // The bid exists although its answer was lost: exactly the case the idempotency key covers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.sandbox.stats().bids_created == 0 {
        assert!(
            Instant::now() < deadline,
            "the sandbox never recorded the bid"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retry = s
        .client(TOKEN, PATIENT)
        .place_bid(&bid("upwork", "job_1"))
        .await
        .unwrap();
    let key = PostingKey::new("upwork", "job_1").unwrap();
    assert_eq!(
        placed(&retry),
        (s.sandbox.bids(&key)[0].bid_id.as_str(), true)
    );
    assert_eq!(s.sandbox.stats().postings["upwork:job_1"].bids, 1);
}

#[tokio::test]
async fn refused_connection_is_transient() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = HttpMarketplace::new(
        &settings(&[("upwork", &format!("http://{addr}/upwork"), PATIENT)]),
        LEASE,
        |_| Some(TOKEN.to_owned()),
    )
    .unwrap();

    let result = client.place_bid(&bid("upwork", "job_1")).await.unwrap();

    let BidResult::Transient { reason, .. } = &result else {
        panic!("expected Transient, got {result:?}");
    };
    assert!(reason.starts_with("connection failed"), "{reason}");
}

#[tokio::test]
async fn invalid_bid_is_rejected_with_the_body_excerpt() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let request = bid_of("upwork", "job_1", Decimal::new(-5, 0));

    let result = s.client(TOKEN, PATIENT).place_bid(&request).await.unwrap();

    let BidResult::Rejected {
        status,
        body_excerpt,
    } = &result
    else {
        panic!("expected Rejected, got {result:?}");
    };
    assert_eq!(*status, 422);
    assert!(body_excerpt.contains("amount.value"), "{body_excerpt}");
    assert!(body_excerpt.chars().count() <= 201);
    assert_eq!(s.sandbox.stats().bids_created, 0);
}

#[tokio::test]
async fn wrong_token_is_unauthorized_never_a_rejection_and_not_echoed() {
    let s = RunningSandbox::start(SandboxOptions {
        token: Some(TOKEN.into()),
        ..SandboxOptions::default()
    })
    .await;

    let result = s
        .client("wrong-token-9c1", PATIENT)
        .place_bid(&bid("upwork", "job_1"))
        .await
        .unwrap();

    // Our credentials, not the posting: the marketplace pauses, the posting is never rejected.
    assert_eq!(result, BidResult::Unauthorized { status: 401 });
    assert!(!format!("{result:?}").contains("wrong-token-9c1"));
}

#[tokio::test]
async fn bearer_token_and_idempotency_key_reach_the_sandbox() {
    // This sandbox accepts only TOKEN, so a placed bid proves the Authorization header.
    let s = RunningSandbox::start(SandboxOptions {
        token: Some(TOKEN.into()),
        ..SandboxOptions::default()
    })
    .await;

    let result = s
        .client(TOKEN, PATIENT)
        .place_bid(&bid("upwork", "job_1"))
        .await
        .unwrap();

    placed(&result);
    let bids = s.bids_over_http("upwork", "job_1").await;
    assert_eq!(bids.len(), 1);
    assert_eq!(bids[0].idempotency_key, "upwork:job_1");
    assert_eq!(bids[0].amount, "450.00");
    assert_eq!(bids[0].currency, "USD");
    assert_eq!(bids[0].cover_letter, "I have built this before.");
}

#[tokio::test]
async fn traceparent_and_tracestate_reach_the_sandbox() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let mut request = bid("upwork", "job_1");
    request
        .trace_headers
        .insert("traceparent".into(), TRACEPARENT.into());
    request
        .trace_headers
        .insert("tracestate".into(), "vendor=abc".into());

    s.client(TOKEN, PATIENT).place_bid(&request).await.unwrap();

    let bids = s.bids_over_http("upwork", "job_1").await;
    assert_eq!(bids[0].traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(bids[0].tracestate.as_deref(), Some("vendor=abc"));
    let stats = s.stats_over_http().await;
    assert_eq!(
        stats.postings["upwork:job_1"].last_traceparent.as_deref(),
        Some(TRACEPARENT)
    );
}

#[tokio::test]
async fn posting_id_with_reserved_characters_arrives_intact() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    // A base_url with a trailing slash joins the same way.
    let client = HttpMarketplace::new(
        &settings(&[("upwork", &format!("{}/", s.base_url("upwork")), PATIENT)]),
        LEASE,
        |_| Some(TOKEN.to_owned()),
    )
    .unwrap();
    let odd = "a/b?c#d%e&f";

    let result = client.place_bid(&bid("upwork", odd)).await.unwrap();

    placed(&result);
    let bids = s.bids_over_http("upwork", odd).await;
    assert_eq!(bids.len(), 1);
    assert_eq!(bids[0].posting_id, odd);
    assert_eq!(bids[0].idempotency_key, format!("upwork:{odd}"));
}

#[tokio::test]
async fn missing_or_empty_token_variable_is_a_config_error_naming_it() {
    let marketplaces = settings(&[
        ("freelancer", "http://127.0.0.1:9/freelancer", PATIENT),
        ("upwork", "http://127.0.0.1:9/upwork", PATIENT),
    ]);
    let env: HashMap<&str, &str> = [("BIDORCH_FREELANCER_TOKEN", "fl-secret-77")].into();

    let missing = HttpMarketplace::new(&marketplaces, LEASE, |v| env.get(v).map(|s| s.to_string()))
        .unwrap_err();
    let empty = HttpMarketplace::new(&marketplaces, LEASE, |v| {
        Some(env.get(v).map_or("   ".to_owned(), |s| s.to_string()))
    })
    .unwrap_err();

    for err in [missing, empty] {
        assert!(
            matches!(&err, MarketplaceError::Config { marketplace, .. } if marketplace == "upwork")
        );
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("BIDORCH_UPWORK_TOKEN"), "{shown}");
        assert!(!shown.contains("fl-secret-77"), "{shown}");
    }
}

#[tokio::test]
async fn debug_output_never_shows_tokens() {
    let client = HttpMarketplace::new(
        &settings(&[("upwork", "http://127.0.0.1:9/upwork", PATIENT)]),
        LEASE,
        |_| Some("tok-very-secret-1234".to_owned()),
    )
    .unwrap();

    let shown = format!("{client:?} {client:#?}");

    assert!(!shown.contains("tok-very-secret-1234"), "{shown}");
    assert!(shown.contains("BIDORCH_UPWORK_TOKEN"), "{shown}");
    assert!(shown.contains("REDACTED"), "{shown}");
}

#[tokio::test]
async fn unknown_marketplace_is_an_error() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let client = s.client(TOKEN, PATIENT);

    let err = client.place_bid(&bid("fiverr", "job_1")).await.unwrap_err();

    assert!(matches!(err, MarketplaceError::Unknown(m) if m == "fiverr"));
    assert!(client.knows("upwork"));
    assert!(!client.knows("fiverr"));
    assert_eq!(s.sandbox.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_with_one_key_create_exactly_one_bid() {
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let client = Arc::new(s.client(TOKEN, PATIENT));
    let start = Arc::new(tokio::sync::Barrier::new(50));

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (client, start) = (client.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                client.place_bid(&bid("upwork", "job_1")).await.unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }

    let first_id = placed(&results[0]).0.to_owned();
    assert!(results.iter().all(|r| placed(r).0 == first_id));
    assert_eq!(results.iter().filter(|r| !placed(r).1).count(), 1);
    let stats = s.stats_over_http().await;
    assert_eq!(stats.requests, 50);
    assert_eq!(stats.bids_created, 1);
    assert_eq!(stats.replays, 49);
    assert_eq!(stats.postings["upwork:job_1"].bids, 1);
    assert_eq!(stats.postings["upwork:job_1"].requests, 50);
    assert!(stats.duplicates.is_empty());
    assert_eq!(stats, s.sandbox.stats());
}

#[tokio::test]
async fn retrying_through_random_faults_places_exactly_one_bid_per_posting() {
    let s = RunningSandbox::start(SandboxOptions {
        fail_rate: 0.5,
        seed: 7,
        ..SandboxOptions::default()
    })
    .await;
    let client = s.client(TOKEN, PATIENT);

    let mut transient = 0;
    for n in 0..20 {
        let request = bid("upwork", &format!("job_{n}"));
        loop {
            match client.place_bid(&request).await.unwrap() {
                BidResult::Placed { .. } => break,
                BidResult::Transient { .. } | BidResult::RateLimited { .. } => transient += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    let stats = s.sandbox.stats();
    assert!(transient > 0, "a 50% fail rate injected no fault");
    assert_eq!(stats.faults, transient);
    assert_eq!(stats.bids_created, 20);
    assert!(stats.postings.values().all(|p| p.bids == 1));
    assert!(stats.duplicates.is_empty());
}

/// (name, headers, body, expected status)
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16);

#[tokio::test]
async fn sandbox_refuses_requests_that_break_the_contract() {
    let s = RunningSandbox::start(SandboxOptions {
        token: Some(TOKEN.into()),
        ..SandboxOptions::default()
    })
    .await;
    let path = "/upwork/v1/postings/job_1/bids";
    let auth = ("authorization", "Bearer sandbox-token-5f3a");
    let key = ("idempotency-key", "upwork:job_1");
    let json = ("content-type", "application/json");
    let cases: Vec<Case> = vec![
        ("no bearer", vec![key, json], GOOD_BODY.into(), 401),
        (
            "basic auth",
            vec![("authorization", "Basic eDp5"), key, json],
            GOOD_BODY.into(),
            401,
        ),
        (
            "no idempotency key",
            vec![auth, json],
            GOOD_BODY.into(),
            400,
        ),
        ("not json", vec![auth, key], GOOD_BODY.into(), 415),
        ("bad json", vec![auth, key, json], "{".into(), 422),
        (
            "amount as a float",
            vec![auth, key, json],
            GOOD_BODY.replace(r#""450.00""#, "450.0"),
            422,
        ),
        (
            "amount not decimal",
            vec![auth, key, json],
            GOOD_BODY.replace("450.00", "4.5e2"),
            422,
        ),
        (
            "lowercase currency",
            vec![auth, key, json],
            GOOD_BODY.replace("USD", "usd"),
            422,
        ),
        (
            "posting id mismatch",
            vec![auth, key, json],
            GOOD_BODY.replace("job_1", "job_2"),
            422,
        ),
    ];

    for (name, headers, body, expected) in &cases {
        let response = post_raw(s.addr, path, headers, body).await;
        assert_eq!(response.status().as_u16(), *expected, "{name}");
    }

    let stats = s.sandbox.stats();
    assert_eq!(stats.rejected, cases.len() as u64);
    assert_eq!(stats.bids_created, 0);
    let ok = post_raw(s.addr, path, &[auth, key, json], GOOD_BODY).await;
    assert_eq!(ok.status(), 201);
}

#[tokio::test]
async fn sandbox_without_idempotency_exposes_duplicates() {
    // The naive mode proves the duplicate detector works: the same key twice is two bids.
    let s = RunningSandbox::start(SandboxOptions {
        honour_idempotency: false,
        ..SandboxOptions::default()
    })
    .await;
    let client = s.client(TOKEN, PATIENT);

    let first = client.place_bid(&bid("upwork", "job_1")).await.unwrap();
    let second = client.place_bid(&bid("upwork", "job_1")).await.unwrap();

    assert_ne!(placed(&first).0, placed(&second).0);
    let stats = s.stats_over_http().await;
    assert_eq!(stats.duplicates, vec!["upwork:job_1".to_owned()]);
    assert_eq!(stats.postings["upwork:job_1"].bids, 2);
}

#[tokio::test]
async fn serve_returns_when_shutdown_resolves() {
    let mut s = RunningSandbox::start(SandboxOptions::default()).await;
    let health = crate::support::http_get(format!("http://{}/healthz", s.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    s.stop.take().unwrap().send(()).unwrap();

    let served = tokio::time::timeout(Duration::from_secs(10), &mut s.task)
        .await
        .expect("serve stops after shutdown")
        .unwrap();
    assert!(served.is_ok());
}

#[tokio::test]
async fn request_latency_is_measured_by_marketplace_and_result() {
    // The process-wide recorder: other tests record too, so this one uses its own marketplace.
    let handle = bidorch::metrics::install();
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let client = HttpMarketplace::new(
        &settings(&[("metricsmk", &s.base_url("metricsmk"), PATIENT)]),
        LEASE,
        |_| Some(TOKEN.to_owned()),
    )
    .unwrap();

    client.place_bid(&bid("metricsmk", "job_1")).await.unwrap();
    client.place_bid(&bid("metricsmk", "job_1")).await.unwrap();

    let text = handle.render();
    for result in ["placed", "replay"] {
        let line = format!(
            "bidorch_marketplace_request_seconds_count{{marketplace=\"metricsmk\",result=\"{result}\"}} 1"
        );
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
}

/// Collects finished spans in memory (the SDK's in-memory exporter needs a feature we do not
/// enable).
#[derive(Clone, Debug, Default)]
struct CollectSpans(Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for CollectSpans {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        self.0.lock().unwrap().extend(batch);
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn sandbox_server_span_continues_the_callers_trace() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let spans = CollectSpans::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // Thread-local: this current-thread runtime runs the sandbox's tasks on this thread too.
    let _default = tracing::subscriber::set_default(subscriber);
    let s = RunningSandbox::start(SandboxOptions::default()).await;
    let mut request = bid("upwork", "job_1");
    request
        .trace_headers
        .insert("traceparent".into(), TRACEPARENT.into());

    s.client(TOKEN, PATIENT).place_bid(&request).await.unwrap();

    // The server span ends when the handler's future is dropped, possibly just after the answer.
    let server_span = "POST /{marketplace}/v1/postings/{posting_id}/bids";
    let deadline = Instant::now() + Duration::from_secs(5);
    let span = loop {
        let found = spans
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == server_span)
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(Instant::now() < deadline, "no server span exported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        span.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Server);
}
