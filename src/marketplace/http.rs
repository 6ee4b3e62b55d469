//! The HTTP marketplace client: one bid as `POST {base_url}/v1/postings/{posting_id}/bids` with
//! bearer token, idempotency key and trace context, its answer classified by the contract.
//!
//! Network trouble (timeouts, refused connections, a body cut short) is a
//! [`BidResult::Transient`]: the retry carries the same `Idempotency-Key`, so it can only replay
//! the bid, never add a second one. Tokens live in [`SecretString`]s and reach nothing but the
//! `Authorization` header (marked sensitive).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;

use super::classify::{Answer, classify};
use super::{BidRequest, BidResult, Marketplace, MarketplaceError};
use crate::config::{MarketplaceSettings, SecretUrl};

/// Trace-context headers copied from [`BidRequest::trace_headers`]; nothing else may ride along
/// (it could shadow `Authorization` or the idempotency key).
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Most of a response body read; the contract's bodies are tiny, an excerpt needs 200 chars.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// One configured marketplace.
struct Endpoint {
    base_url: url::Url,
    token_env: String,
    token: SecretString,
    timeout: Duration,
}

/// Places bids on the configured marketplaces over HTTP (reqwest, rustls).
///
/// One connection pool serves all marketplaces. reqwest sets the connect timeout per client, so
/// the pool uses the largest `connect_timeout` configured, and every request is bounded by its
/// own marketplace's `timeout`, which covers connecting too: no call outlives that bound.
pub struct HttpMarketplace {
    client: reqwest::Client,
    endpoints: BTreeMap<String, Endpoint>,
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
        crate::tls::install_default_provider();
        let mut endpoints = BTreeMap::new();
        for (name, settings) in marketplaces {
            let problem = |problem: String| MarketplaceError::Config {
                marketplace: name.clone(),
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
            endpoints.insert(
                name.clone(),
                Endpoint {
                    base_url,
                    token_env: settings.token_env.clone(),
                    token: SecretString::from(token),
                    timeout: settings.timeouts(lock_ttl).0,
                },
            );
        }
        let connect_timeout = marketplaces
            .values()
            .map(|m| m.timeouts(lock_ttl).1)
            .max()
            .unwrap_or(Duration::from_secs(2));
        let client = reqwest::Client::builder()
            .user_agent(concat!("bidorch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            // A redirect would replay a POST carrying our token somewhere unconfigured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| MarketplaceError::Config {
                marketplace: "*".to_owned(),
                problem: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self { client, endpoints })
    }

    /// The marketplaces this client can place bids on.
    pub fn marketplaces(&self) -> impl Iterator<Item = &str> {
        self.endpoints.keys().map(String::as_str)
    }

    /// Sends the request and classifies the answer; transport errors become `Transient`.
    async fn send(&self, endpoint: &Endpoint, bid: &BidRequest) -> BidResult {
        let url = bid_url(&endpoint.base_url, bid.key.posting_id());
        let token = endpoint.token.expose_secret();
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .expect("the token was checked to be a valid header value at construction");
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        if let Ok(key) = HeaderValue::from_str(&bid.key.idempotency_key()) {
            // Always valid: a PostingKey is printable ASCII.
            headers.insert(HeaderName::from_static("idempotency-key"), key);
        }
        for name in TRACE_HEADERS {
            let value = bid
                .trace_headers
                .get(name)
                .map(|v| HeaderValue::from_str(v));
            match value {
                Some(Ok(value)) => {
                    headers.insert(HeaderName::from_static(name), value);
                }
                Some(Err(_)) => tracing::debug!(header = name, "Dropping invalid trace header"),
                None => {}
            }
        }
        let sent = self
            .client
            .post(url)
            .timeout(endpoint.timeout)
            .headers(headers)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bid.body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => return transport_failure(&e),
        };
        let status = response.status().as_u16();
        tracing::Span::current().record("http.response.status_code", status);
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY_BYTES - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= MAX_BODY_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                // The answer was cut short: we cannot know whether the bid exists.
                Err(e) => return transport_failure(&e),
            }
        }
        let answer = Answer {
            status,
            retry_after: retry_after.as_deref(),
            body: &body,
        };
        classify(&answer, token, chrono::Utc::now())
    }
}

/// A transport error as a `Transient` result; the reason never carries the URL.
fn transport_failure(e: &reqwest::Error) -> BidResult {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut reason = kind.to_owned();
    // The chain's innermost causes say why (refused, reset, dns); the URL is stripped first.
    let mut source = std::error::Error::source(e);
    let mut causes = Vec::new();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    if let Some(last) = causes.last() {
        reason = format!("{reason}: {last}");
    }
    BidResult::Transient {
        reason,
        retry_after: None,
        status: None,
    }
}

/// `{base_url}/v1/postings/{posting_id}/bids`, keeping any path prefix of `base_url` and
/// percent-encoding the id as one segment (`/`, `?`, `#`, `%` included).
pub(crate) fn bid_url(base_url: &url::Url, posting_id: &str) -> url::Url {
    let mut url = base_url.clone();
    url.set_fragment(None);
    if let Ok(mut segments) = url.path_segments_mut() {
        // Checked at construction: an http(s) URL always takes path segments.
        segments
            .pop_if_empty()
            .extend(["v1", "postings", posting_id, "bids"]);
    }
    url
}

#[async_trait]
impl Marketplace for HttpMarketplace {
    async fn place_bid(&self, bid: &BidRequest) -> Result<BidResult, MarketplaceError> {
        let marketplace = bid.key.marketplace();
        let endpoint = self
            .endpoints
            .get(marketplace)
            .ok_or_else(|| MarketplaceError::Unknown(marketplace.to_owned()))?;
        // DEBUG like the pipeline's steps: traces take it, INFO logs do not.
        let span = tracing::debug_span!(
            "marketplace.place_bid",
            otel.name = "POST",
            otel.kind = "client",
            http.request.method = "POST",
            http.route = "/v1/postings/{posting_id}/bids",
            server.address = endpoint.base_url.host_str().unwrap_or_default(),
            server.port = endpoint.base_url.port_or_known_default(),
            url.full = %crate::config::secret::redact(
                bid_url(&endpoint.base_url, bid.key.posting_id()).as_str()
            ),
            http.response.status_code = tracing::field::Empty,
            marketplace,
            posting_id = bid.key.posting_id(),
            outcome = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = self.send(endpoint, bid).instrument(span.clone()).await;
        record(marketplace, &result, started.elapsed(), &span);
        Ok(result)
    }

    fn knows(&self, marketplace: &str) -> bool {
        self.endpoints.contains_key(marketplace)
    }
}

/// The one place a bid call is measured and logged, so the metric and the log cannot drift.
fn record(marketplace: &str, result: &BidResult, elapsed: Duration, span: &tracing::Span) {
    let label = result.label();
    span.record("outcome", label);
    metrics::histogram!(
        "bidorch_marketplace_request_seconds",
        "marketplace" => marketplace.to_owned(),
        "result" => label,
    )
    .record(elapsed.as_secs_f64());
    match result {
        BidResult::Transient {
            reason,
            retry_after,
            ..
        } => tracing::debug!(
            parent: span,
            marketplace,
            result = label,
            reason,
            retry_after = ?retry_after,
            elapsed = ?elapsed,
            "Marketplace call failed transiently"
        ),
        _ => tracing::debug!(
            parent: span,
            marketplace,
            result = label,
            elapsed = ?elapsed,
            "Marketplace call answered"
        ),
    }
}

impl fmt::Debug for HttpMarketplace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, e) in &self.endpoints {
            map.entry(
                name,
                &format_args!(
                    "{{ base_url: {}, token_env: {:?}, token: [REDACTED], timeout: {:?} }}",
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

    #[test]
    fn bid_url_keeps_the_path_prefix_with_or_without_slash() {
        for base in ["http://h:8081/upwork", "http://h:8081/upwork/"] {
            assert_eq!(
                bid_url(&url(base), "job_1").as_str(),
                "http://h:8081/upwork/v1/postings/job_1/bids"
            );
        }
        assert_eq!(
            bid_url(&url("https://api.example"), "job_1").as_str(),
            "https://api.example/v1/postings/job_1/bids"
        );
    }

    #[test]
    fn bid_url_encodes_the_posting_id_as_one_segment() {
        assert_eq!(
            bid_url(&url("http://h/m"), "a/b?c#d%e").as_str(),
            "http://h/m/v1/postings/a%2Fb%3Fc%23d%25e/bids"
        );
    }

    proptest::proptest! {
        #[test]
        fn every_posting_id_the_contract_allows_reaches_the_marketplace_as_itself(
            id in "[!-~]{1,128}"
        ) {
            proptest::prop_assume!(crate::posting::PostingKey::new("m", &id).is_ok());
            let sent = bid_url(&url("http://h:1/m"), &id);
            // What a server reads: the URL as sent, parsed again, the segment decoded.
            let received = url(sent.as_str());
            let segments: Vec<&str> = received.path_segments().unwrap().collect();
            proptest::prop_assert_eq!(segments.len(), 5, "{}", sent);
            let decoded = percent_encoding::percent_decode_str(segments[3]).decode_utf8().unwrap();
            proptest::prop_assert_eq!(decoded.as_ref(), id.as_str());
        }
    }
}
