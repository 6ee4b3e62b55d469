//! How a marketplace request travels: [`Transport`], one bounded request and its answer read.
//!
//! Directly, over hyper's pooled HTTP/1 client with rustls (ring, the platform's roots): that is
//! the client reqwest is built on, without reqwest's per-request layers, which parse each
//! request's URL twice more and cost about half of a bid's HTTP work (docs/benchmarks.md). When
//! the environment names a proxy for a marketplace (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
//! minus `NO_PROXY`), every call goes through reqwest instead, which speaks to proxies.
//!
//! Either way the outcome is an [`Exchange`]: a timeout, a refused connection or a body cut short
//! is `Failed`, described without the URL (its query may carry a secret).

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioExecutor;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};

use super::client::{Exchange, MAX_BODY_BYTES};

const AGENT: &str = concat!("bidorch/", env!("CARGO_PKG_VERSION"));

/// The HTTP client every marketplace shares.
#[derive(Clone)]
pub(crate) enum Transport {
    /// hyper's pooled client, straight to the marketplace.
    Direct(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
    /// reqwest, because a proxy is configured for one of the marketplaces.
    Proxied(reqwest::Client),
}

impl Transport {
    /// A client for `base_urls` that connects within `connect_timeout` and never follows a
    /// redirect (it would replay a request carrying our token somewhere unconfigured).
    pub fn new<'a>(
        base_urls: impl IntoIterator<Item = &'a url::Url>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        crate::tls::install_default_provider();
        if proxied(&Matcher::from_env(), base_urls) {
            return reqwest::Client::builder()
                .user_agent(AGENT)
                .connect_timeout(connect_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map(Self::Proxied)
                .map_err(|e| format!("cannot build the HTTP client: {e}"));
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|config| {
            rustls_platform_verifier::BuilderVerifierExt::with_platform_verifier(config)
        })
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self::Direct(
            Client::builder(TokioExecutor::new()).build(https),
        ))
    }

    /// Whether calls go through reqwest for a proxy.
    pub fn proxied(&self) -> bool {
        matches!(self, Self::Proxied(_))
    }

    /// Sends `method url` with `headers` and `body` (JSON), all of it bounded by `timeout`, and
    /// reads the answer (up to [`MAX_BODY_BYTES`]).
    pub async fn exchange(
        &self,
        method: reqwest::Method,
        url: &url::Url,
        headers: HeaderMap,
        body: Option<String>,
        timeout: Duration,
    ) -> Exchange {
        match self {
            Self::Direct(client) => {
                match tokio::time::timeout(timeout, direct(client, method, url, headers, body))
                    .await
                {
                    Ok(exchange) => exchange,
                    // It may have been sent: only a connection never made proves otherwise.
                    Err(_) => Exchange::Failed {
                        reason: "timeout".to_owned(),
                        reached: true,
                    },
                }
            }
            Self::Proxied(client) => {
                through_proxy(client, method, url, headers, body, timeout).await
            }
        }
    }
}

/// Whether `proxies` (the environment's, as reqwest reads them) intercept any of `base_urls`.
fn proxied<'a>(proxies: &Matcher, base_urls: impl IntoIterator<Item = &'a url::Url>) -> bool {
    base_urls
        .into_iter()
        .any(|url| http_uri(url).is_ok_and(|uri| proxies.intercept(&uri).is_some()))
}

/// `url` as the request target hyper takes.
fn http_uri(url: &url::Url) -> Result<hyper::Uri, hyper::http::uri::InvalidUri> {
    url.as_str().parse()
}

async fn direct(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    method: reqwest::Method,
    url: &url::Url,
    mut headers: HeaderMap,
    body: Option<String>,
) -> Exchange {
    let uri = match http_uri(url) {
        Ok(uri) => uri,
        Err(e) => {
            return Exchange::Failed {
                reason: format!("request failed: {e}"),
                reached: false,
            };
        }
    };
    headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
    let body = match body {
        Some(body) => {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Full::new(Bytes::from(body))
        }
        None => Full::new(Bytes::new()),
    };
    let mut request = hyper::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => {
            return failure(
                if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                },
                &e,
                !e.is_connect(),
            );
        }
    };
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let mut incoming = response.into_body();
    let mut body = Vec::new();
    while body.len() < MAX_BODY_BYTES {
        match incoming.frame().await {
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    keep(&mut body, chunk);
                }
            }
            None => break,
            // The answer was cut short: we cannot know what happened.
            Some(Err(e)) => return failure("request failed", &e, true),
        }
    }
    Exchange::Answered {
        status,
        retry_after,
        body,
    }
}

async fn through_proxy(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &url::Url,
    headers: HeaderMap,
    body: Option<String>,
    timeout: Duration,
) -> Exchange {
    let mut request = client
        .request(method, url.clone())
        .timeout(timeout)
        .headers(headers);
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => return reqwest_failure(&e),
    };
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let mut body = Vec::new();
    while body.len() < MAX_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => keep(&mut body, &chunk),
            Ok(None) => break,
            Err(e) => return reqwest_failure(&e),
        }
    }
    Exchange::Answered {
        status,
        retry_after,
        body,
    }
}

/// An answer's `Retry-After`, if readable.
fn retry_after(headers: &HeaderMap) -> Option<String> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Appends as much of `chunk` as [`MAX_BODY_BYTES`] leaves room for.
fn keep(body: &mut Vec<u8>, chunk: &[u8]) {
    let room = MAX_BODY_BYTES.saturating_sub(body.len());
    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

fn reqwest_failure(e: &reqwest::Error) -> Exchange {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    failure(kind, e, !e.is_connect())
}

/// `kind`, with the innermost cause of `e` (refused, reset, dns), which names no URL.
fn failure(kind: &str, e: &dyn std::error::Error, reached: bool) -> Exchange {
    let mut last = None;
    let mut source = e.source();
    while let Some(cause) = source {
        last = Some(cause.to_string());
        source = cause.source();
    }
    let reason = match last {
        Some(last) => format!("{kind}: {last}"),
        None => kind.to_owned(),
    };
    Exchange::Failed { reason, reached }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<url::Url> {
        list.iter().map(|u| url::Url::parse(u).unwrap()).collect()
    }

    #[test]
    fn a_proxy_for_any_marketplace_sends_every_call_through_reqwest() {
        let proxies = Matcher::builder()
            .http("http://proxy.internal:3128")
            .no("127.0.0.1,localhost")
            .build();
        let local = urls(&["http://127.0.0.1:8081/upwork", "http://localhost:1/x"]);
        assert!(!proxied(&proxies, &local), "NO_PROXY hosts go direct");
        let remote = urls(&["http://127.0.0.1:8081/upwork", "http://api.example/"]);
        assert!(proxied(&proxies, &remote));
        assert!(
            !proxied(&Matcher::builder().build(), &remote),
            "no proxy set"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_never_reached_the_marketplace() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = url::Url::parse(&format!("http://127.0.0.1:{port}/m")).unwrap();
        let transport = Transport::new([&url], Duration::from_secs(2)).unwrap();
        assert!(!transport.proxied());
        let sent = transport
            .exchange(
                reqwest::Method::POST,
                &url,
                HeaderMap::new(),
                Some("{}".to_owned()),
                Duration::from_secs(5),
            )
            .await;
        match sent {
            Exchange::Failed { reason, reached } => {
                assert!(!reached, "{reason}");
                assert!(reason.starts_with("connection failed: "), "{reason}");
                assert!(!reason.contains("127.0.0.1"), "no URL in {reason}");
            }
            Exchange::Answered { status, .. } => panic!("answered {status}"),
        }
    }
}
