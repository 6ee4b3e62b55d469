//! [`HttpMarketplace`]: every configured marketplace behind the [`Marketplace`] port, each through
//! the adapter of the API it speaks, over one HTTP client (a [`Transport`]) — and what the
//! adapters share: an [`Endpoint`] (base URL, token, timeout) and one bounded exchange with it.
//!
//! Network trouble (timeouts, refused connections, a body cut short) is an [`Exchange::Failed`],
//! never an error: what it means for a bid is the adapter's and the pipeline's business. Tokens
//! live in [`SecretString`]s and reach nothing but their header (marked sensitive); URLs are
//! shown redacted.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;

use super::classify::Answer;
use super::contract::ContractApi;
use super::freelancer::FreelancerApi;
use super::transport::Transport;
use super::{
    BidRequest, BidResult, BidTerms, Capabilities, LiveCheck, Lookup, LookupRequest, Marketplace,
    MarketplaceError, RequestRefusal,
};
use crate::config::{MarketplaceApi, MarketplaceSettings, SecretUrl};
use crate::ledger::StoredRequest;
use crate::posting::PostingKey;

/// Trace-context headers copied from a request's trace headers; nothing else may ride along (it
/// could shadow the credentials or the idempotency key).
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Most of a response body read; the APIs' bodies are small, an excerpt needs 200 chars, a page
/// of a hundred bids a few dozen KiB.
pub(crate) const MAX_BODY_BYTES: usize = 512 * 1024;

/// One marketplace's HTTP endpoint: where it is, how we authenticate, how long a call may take.
pub(crate) struct Endpoint {
    /// The configured name (`upwork`).
    pub name: String,
    pub base_url: url::Url,
    pub token_env: String,
    token: SecretString,
    pub timeout: Duration,
    transport: Transport,
}

/// What one exchange with an endpoint came to.
pub(crate) enum Exchange {
    /// An answer, its body read (up to [`MAX_BODY_BYTES`]).
    Answered {
        status: u16,
        retry_after: Option<String>,
        body: Vec<u8>,
    },
    /// No (whole) answer. `reached` is false only when the connection was never made: then the
    /// request provably did not reach the marketplace.
    Failed { reason: String, reached: bool },
}

impl Endpoint {
    /// The token, for the header that carries it (never for showing).
    pub fn token(&self) -> &str {
        self.token.expose_secret()
    }

    /// `base_url` with `segments` appended as path segments (each percent-encoded as one), any
    /// fragment dropped, the path prefix kept.
    pub fn url(&self, segments: &[&str]) -> url::Url {
        join_path(&self.base_url, segments)
    }

    /// Sends `method url` with `headers` (plus the trace headers of `trace`, and a JSON `body`
    /// if any) in a client span named `method`, bounded by the endpoint's timeout, and reads the
    /// answer.
    pub async fn exchange(
        &self,
        method: reqwest::Method,
        url: url::Url,
        mut headers: HeaderMap,
        trace: &BTreeMap<String, String>,
        body: Option<String>,
    ) -> Exchange {
        for name in TRACE_HEADERS {
            match trace.get(name).map(|v| HeaderValue::from_str(v)) {
                Some(Ok(value)) => {
                    headers.insert(HeaderName::from_static(name), value);
                }
                Some(Err(_)) => tracing::debug!(header = name, "Dropping invalid trace header"),
                None => {}
            }
        }
        // DEBUG like the pipeline's steps: traces take it, INFO logs do not.
        let span = tracing::debug_span!(
            "marketplace.http",
            otel.name = %method,
            otel.kind = "client",
            http.request.method = %method,
            server.address = url.host_str().unwrap_or_default(),
            server.port = url.port_or_known_default(),
            url.full = %crate::config::secret::redact(url.as_str()),
            http.response.status_code = tracing::field::Empty,
            marketplace = %self.name,
        );
        let exchanged = self
            .transport
            .exchange(method, &url, headers, body, self.timeout)
            .instrument(span.clone())
            .await;
        if let Exchange::Answered { status, .. } = &exchanged {
            span.record("http.response.status_code", status);
        }
        exchanged
    }

    /// POSTs `bid`'s stored body to `url` with `headers` in the posting's trace: no answer is a
    /// [`BidResult::Transient`] (`reached` as the exchange says), an answer is what `classify`
    /// makes of it.
    pub async fn send_bid(
        &self,
        url: url::Url,
        headers: HeaderMap,
        bid: &BidRequest,
        classify: impl FnOnce(&Answer<'_>) -> BidResult,
    ) -> BidResult {
        let body = Some(bid.body.clone());
        match self
            .exchange(
                reqwest::Method::POST,
                url,
                headers,
                &bid.trace_headers,
                body,
            )
            .await
        {
            Exchange::Failed { reason, reached } => BidResult::Transient {
                reason,
                retry_after: None,
                status: None,
                reached,
            },
            Exchange::Answered {
                status,
                retry_after,
                body,
            } => classify(&Answer {
                status,
                retry_after: retry_after.as_deref(),
                body: &body,
            }),
        }
    }

    /// GETs `url` with `headers`, in `trace`.
    pub async fn get(
        &self,
        url: url::Url,
        headers: HeaderMap,
        trace: &BTreeMap<String, String>,
    ) -> Exchange {
        self.exchange(reqwest::Method::GET, url, headers, trace, None)
            .await
    }
}

/// `base` with `segments` appended as path segments (each percent-encoded as one), any fragment
/// dropped, the path prefix kept (with or without its trailing slash).
pub(crate) fn join_path(base: &url::Url, segments: &[&str]) -> url::Url {
    let mut url = base.clone();
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        // Checked at construction: an http(s) URL always takes path segments.
        path.pop_if_empty().extend(segments);
    }
    url
}

/// One marketplace's API: what the pipeline asks of it, in that API's words.
#[async_trait]
pub(crate) trait Api: Send + Sync {
    /// The API this adapter speaks.
    fn kind(&self) -> MarketplaceApi;
    fn capabilities(&self) -> Capabilities;
    /// The request body for a bid on `key`, in this API's words.
    async fn request_for(
        &self,
        key: &PostingKey,
        terms: &BidTerms,
    ) -> Result<StoredRequest, RequestRefusal>;
    async fn place(&self, bid: &BidRequest) -> BidResult;
    async fn find(&self, lookup: &LookupRequest) -> Lookup;
    async fn check(&self) -> LiveCheck;
    /// Its endpoint (for `Debug`).
    fn endpoint(&self) -> &Endpoint;
}

/// Places bids on the configured marketplaces over HTTP, each through its API's adapter.
///
/// One connection pool serves all marketplaces. The connect timeout is set per client, so
/// the pool uses the largest `connect_timeout` configured, and every request is bounded by its
/// own marketplace's `timeout`, which covers connecting too: no call outlives that bound.
pub struct HttpMarketplace {
    apis: BTreeMap<String, Box<dyn Api>>,
}

impl HttpMarketplace {
    /// Builds the client. `token_of` returns the value of an environment variable by name
    /// (production passes `|v| std::env::var(v).ok()`); a missing or empty token, a token that is
    /// not a valid header value, or a `base_url` that cannot take a path is a
    /// [`MarketplaceError::Config`] naming the marketplace and the variable — never the token.
    /// `lock_ttl` sizes the timeouts a marketplace does not set.
    pub fn new(
        marketplaces: &BTreeMap<String, MarketplaceSettings>,
        lock_ttl: Duration,
        token_of: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, MarketplaceError> {
        let connect_timeout = marketplaces
            .values()
            .map(|m| m.timeouts(lock_ttl).1)
            .max()
            .unwrap_or(Duration::from_secs(2));
        let client = Transport::new(
            marketplaces.values().map(|m| m.base_url.url()),
            connect_timeout,
        )
        .map_err(|problem| MarketplaceError::Config {
            marketplace: marketplaces.keys().cloned().collect::<Vec<_>>().join(","),
            problem,
        })?;
        if client.proxied() {
            tracing::info!(
                "A proxy is configured for a marketplace: calls go through the proxy-aware client"
            );
        }
        let mut apis: BTreeMap<String, Box<dyn Api>> = BTreeMap::new();
        for (name, settings) in marketplaces {
            let endpoint = endpoint(name, settings, lock_ttl, &client, &token_of)?;
            let api: Box<dyn Api> = match settings.api {
                MarketplaceApi::Contract => Box::new(ContractApi::new(endpoint)),
                MarketplaceApi::Freelancer => Box::new(FreelancerApi::new(
                    endpoint,
                    settings,
                    settings.lookup_delay(lock_ttl),
                )),
            };
            let can = api.capabilities();
            if !(can.idempotency_keys || can.lookup) {
                return Err(MarketplaceError::Config {
                    marketplace: name.clone(),
                    problem: format!(
                        "the `{}` API has neither idempotency keys nor a lookup: a send whose \
                         answer was lost could not be settled without risking a second bid",
                        settings.api.as_str()
                    ),
                });
            }
            apis.insert(name.clone(), api);
        }
        Ok(Self { apis })
    }

    /// The marketplaces this client can place bids on.
    pub fn marketplaces(&self) -> impl Iterator<Item = &str> {
        self.apis.keys().map(String::as_str)
    }

    fn api(&self, marketplace: &str) -> Result<&dyn Api, MarketplaceError> {
        self.apis
            .get(marketplace)
            .map(Box::as_ref)
            .ok_or_else(|| MarketplaceError::Unknown(marketplace.to_owned()))
    }
}

/// The endpoint `settings` describe, its token read from the environment.
fn endpoint(
    name: &str,
    settings: &MarketplaceSettings,
    lock_ttl: Duration,
    client: &Transport,
    token_of: &impl Fn(&str) -> Option<String>,
) -> Result<Endpoint, MarketplaceError> {
    let problem = |problem: String| MarketplaceError::Config {
        marketplace: name.to_owned(),
        problem,
    };
    let base_url = settings.base_url.url().clone();
    if !matches!(base_url.scheme(), "http" | "https") || base_url.cannot_be_a_base() {
        return Err(problem(format!(
            "base_url {} must be an http:// or https:// URL",
            SecretUrl::new(base_url.as_str()).redacted()
        )));
    }
    if !base_url.username().is_empty() || base_url.password().is_some() {
        return Err(problem(format!(
            "base_url {} must not carry credentials; the token comes from `{}`",
            SecretUrl::new(base_url.as_str()).redacted(),
            settings.token_env
        )));
    }
    let token = token_of(&settings.token_env)
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            problem(format!(
                "environment variable `{}` (token_env) is not set or empty",
                settings.token_env
            ))
        })?;
    if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
        return Err(problem(format!(
            "the token in `{}` is not a valid HTTP header value",
            settings.token_env
        )));
    }
    Ok(Endpoint {
        name: name.to_owned(),
        base_url,
        token_env: settings.token_env.clone(),
        token: SecretString::from(token),
        timeout: settings.timeouts(lock_ttl).0,
        transport: client.clone(),
    })
}

/// A sensitive header value (never shown by `Debug`).
pub(crate) fn secret_header(value: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(value)
        .expect("the token was checked to be a valid header value at construction");
    value.set_sensitive(true);
    value
}

#[async_trait]
impl Marketplace for HttpMarketplace {
    fn knows(&self, marketplace: &str) -> bool {
        self.apis.contains_key(marketplace)
    }

    fn capabilities(&self, marketplace: &str) -> Option<Capabilities> {
        self.apis.get(marketplace).map(|api| api.capabilities())
    }

    async fn request_for(
        &self,
        key: &PostingKey,
        terms: &BidTerms,
    ) -> Result<Result<StoredRequest, RequestRefusal>, MarketplaceError> {
        Ok(self.api(key.marketplace())?.request_for(key, terms).await)
    }

    async fn place_bid(&self, bid: &BidRequest) -> Result<BidResult, MarketplaceError> {
        let marketplace = bid.key.marketplace();
        let api = self.api(marketplace)?;
        if bid.api != api.kind().as_str() {
            return Err(MarketplaceError::ApiChanged {
                marketplace: marketplace.to_owned(),
                stored: bid.api.clone(),
                configured: api.kind().as_str().to_owned(),
            });
        }
        let started = Instant::now();
        let result = api.place(bid).await;
        record(marketplace, result.label(), started.elapsed());
        if let BidResult::Transient { reason, .. } = &result {
            tracing::debug!(marketplace, reason, "Marketplace call failed transiently");
        }
        Ok(result)
    }

    async fn find_bid(&self, lookup: &LookupRequest) -> Result<Lookup, MarketplaceError> {
        let marketplace = lookup.key.marketplace();
        let started = Instant::now();
        let found = self.api(marketplace)?.find(lookup).await;
        let label = match &found {
            Lookup::Found { .. } => "lookup_found",
            Lookup::NotFound => "lookup_not_found",
            Lookup::Gone => "lookup_gone",
            Lookup::Unanswered { .. } => "lookup_unanswered",
        };
        record(marketplace, label, started.elapsed());
        Ok(found)
    }

    async fn check(&self, marketplace: &str) -> Result<LiveCheck, MarketplaceError> {
        Ok(self.api(marketplace)?.check().await)
    }
}

/// The one place a marketplace call is measured.
fn record(marketplace: &str, result: &'static str, elapsed: Duration) {
    use std::sync::{Arc, LazyLock};

    use crate::metrics::Handles;
    /// `bidorch_marketplace_request_seconds` by marketplace, then by result: kept, not looked
    /// up in the recorder on every call.
    type ByResult = Handles<&'static str, metrics::Histogram>;
    static SECONDS: LazyLock<Handles<String, Arc<ByResult>>> = LazyLock::new(Handles::new);
    SECONDS
        .get(marketplace, || {
            (marketplace.to_owned(), Arc::new(Handles::new()))
        })
        .get(&result, || {
            let seconds = metrics::histogram!(
                "bidorch_marketplace_request_seconds",
                "marketplace" => marketplace.to_owned(),
                "result" => result,
            );
            (result, seconds)
        })
        .record(elapsed.as_secs_f64());
}

impl fmt::Debug for HttpMarketplace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, api) in &self.apis {
            let e = api.endpoint();
            map.entry(
                name,
                &format_args!(
                    "{{ api: {}, base_url: {}, token_env: {:?}, token: [REDACTED], timeout: {:?} }}",
                    api.kind().as_str(),
                    SecretUrl::new(e.base_url.as_str()).redacted(),
                    e.token_env,
                    e.timeout
                ),
            );
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    fn bid_url(base: &str, posting_id: &str) -> String {
        join_path(&url(base), &["v1", "postings", posting_id, "bids"]).to_string()
    }

    #[test]
    fn paths_keep_the_base_urls_prefix_with_or_without_slash() {
        for base in ["http://h:8081/upwork", "http://h:8081/upwork/"] {
            assert_eq!(
                bid_url(base, "job_1"),
                "http://h:8081/upwork/v1/postings/job_1/bids"
            );
        }
        assert_eq!(
            bid_url("https://api.example", "job_1"),
            "https://api.example/v1/postings/job_1/bids"
        );
        assert_eq!(
            join_path(
                &url("https://www.freelancer.com/#x"),
                &["api", "projects", "0.1", "bids", ""]
            )
            .as_str(),
            "https://www.freelancer.com/api/projects/0.1/bids/"
        );
    }

    #[test]
    fn a_posting_id_is_one_segment_whatever_it_holds() {
        assert_eq!(
            bid_url("http://h/m", "a/b?c#d%e"),
            "http://h/m/v1/postings/a%2Fb%3Fc%23d%25e/bids"
        );
    }

    proptest::proptest! {
        #[test]
        fn every_posting_id_the_contract_allows_reaches_the_marketplace_as_itself(
            id in "[!-~]{1,128}"
        ) {
            proptest::prop_assume!(crate::posting::PostingKey::new("m", &id).is_ok());
            let sent = bid_url("http://h:1/m", &id);
            // What a server reads: the URL as sent, parsed again, the segment decoded.
            let received = url(&sent);
            let segments: Vec<&str> = received.path_segments().unwrap().collect();
            proptest::prop_assert_eq!(segments.len(), 5, "{}", sent);
            let decoded = percent_encoding::percent_decode_str(segments[3]).decode_utf8().unwrap();
            proptest::prop_assert_eq!(decoded.as_ref(), id.as_str());
        }
    }
}
