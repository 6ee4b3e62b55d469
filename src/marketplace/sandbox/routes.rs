//! The sandbox's HTTP surface: the contract's bid route — request checks in the order a real
//! marketplace applies them (faults, auth, idempotency key, content type, body), then the book
//! decides, then the answer — the Freelancer dialect's routes (`freelancer.rs`), the operator
//! endpoints, and what every route shares: its server span and the injected faults.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rust_decimal::Decimal;
use serde_json::json;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::book::Placement;
use super::{Bid, Fault, Sandbox};
use crate::posting::PostingKey;
use std::future::Future;

/// Longest cover letter accepted.
const MAX_COVER_LETTER_CHARS: usize = 20_000;

pub(super) fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route(
            "/{marketplace}/v1/postings/{posting_id}/bids",
            post(place_bid),
        )
        .route("/v1/stats", get(stats))
        .route("/v1/score", post(score))
        .route("/v1/bids/{marketplace}/{posting_id}", get(bids))
        .route("/healthz", get(|| async { "ok" }))
        .merge(super::freelancer::routes())
        .with_state(sandbox)
}

/// A stand-in scoring service (`[scoring]`): 0.1 for a title with "low-score" in it, else 0.9;
/// `503` while [`Sandbox::set_scoring_down`] says so.
async fn score(State(sandbox): State<Sandbox>, body: axum::body::Bytes) -> Response {
    if sandbox.state().scoring_down {
        return error(StatusCode::SERVICE_UNAVAILABLE, "scoring is down");
    }
    let title = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["title"].as_str().map(str::to_lowercase))
        .unwrap_or_default();
    let score = if title.contains("low-score") {
        0.1
    } else {
        0.9
    };
    sandbox.state().scored += 1;
    axum::Json(json!({ "score": score })).into_response()
}

async fn stats(State(sandbox): State<Sandbox>) -> Response {
    axum::Json(sandbox.stats()).into_response()
}

async fn bids(
    State(sandbox): State<Sandbox>,
    Path((marketplace, posting_id)): Path<(String, String)>,
) -> Response {
    match PostingKey::new(&marketplace, &posting_id) {
        Ok(key) => axum::Json(sandbox.bids(&key)).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

/// `POST /{marketplace}/v1/postings/{posting_id}/bids`, in a server span continuing the caller's
/// trace from its `traceparent`.
async fn place_bid(
    State(sandbox): State<Sandbox>,
    Path((marketplace, posting_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = "/{marketplace}/v1/postings/{posting_id}/bids";
    traced(&sandbox, "POST", route, &marketplace, &headers, async {
        answer(&sandbox, &marketplace, &posting_id, &headers, &body)
    })
    .await
}

/// Answers a request of `route` in a server span continuing the caller's trace from its
/// `traceparent`; a bid (`POST`) is answered after the configured latency — after it was
/// recorded, so a client giving up on a slow answer has still placed its bid.
pub(super) async fn traced(
    sandbox: &Sandbox,
    method: &'static str,
    route: &'static str,
    marketplace: &str,
    headers: &HeaderMap,
    answer: impl Future<Output = Response>,
) -> Response {
    // DEBUG: traces take it (see crate::telemetry), the sandbox's INFO log does not.
    let span = tracing::debug_span!(
        "sandbox.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        marketplace = %marketplace,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Before the span is entered, or the parent is ignored; fails only without an OTel layer.
    let _ = span.set_parent(parent);
    async move {
        let response = answer.await;
        tracing::Span::current().record("http.response.status_code", response.status().as_u16());
        let latency = sandbox.options().latency;
        if method == "POST" && !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        response
    }
    .instrument(span)
    .await
}

fn answer(
    sandbox: &Sandbox,
    marketplace: &str,
    posting_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Ok(key) = PostingKey::new(marketplace, posting_id) else {
        return error(StatusCode::NOT_FOUND, "no such marketplace or posting");
    };
    let traceparent = header_str(headers, "traceparent");
    if let Some(fault) = sandbox.take_fault(&key.to_string(), traceparent, true) {
        return fault_response(&fault);
    }
    let checked = check_auth(sandbox, headers)
        .and_then(|()| idempotency_key(headers))
        .and_then(|idempotency_key| {
            let raw_body = body;
            let body = check_body(&key, headers, body)?;
            Ok(Bid {
                bid_id: format!("bid_{}", uuid::Uuid::new_v4().simple()),
                marketplace: key.marketplace().to_owned(),
                posting_id: key.posting_id().to_owned(),
                idempotency_key,
                amount: body.amount.value,
                currency: body.amount.currency,
                cover_letter: body.cover_letter,
                traceparent: traceparent.map(str::to_owned),
                tracestate: header_str(headers, "tracestate").map(str::to_owned),
                request_sha256: crate::ledger::sha256_hex(raw_body),
                created_at: chrono::Utc::now(),
            })
        });
    let mut state = sandbox.state();
    let bid = match checked {
        Ok(bid) => bid,
        Err(refusal) => {
            state.book.count_rejected();
            return refusal.into_response();
        }
    };
    let placement = state.book.place(bid, sandbox.options().honour_idempotency);
    if matches!(placement, Placement::Created(_) | Placement::Replayed(_))
        && state.lose_answer(sandbox.options().lose_rate)
    {
        state.book.count_lost();
        return error(StatusCode::BAD_GATEWAY, "upstream answer lost");
    }
    match placement {
        Placement::Created(bid) => (
            StatusCode::CREATED,
            axum::Json(json!({"bid_id": bid.bid_id})),
        )
            .into_response(),
        Placement::Replayed(bid) => {
            (StatusCode::OK, axum::Json(json!({"bid_id": bid.bid_id}))).into_response()
        }
        Placement::Conflict { bid_id } => (
            StatusCode::CONFLICT,
            axum::Json(json!({
                "error": "a bid for this posting already exists under another idempotency key",
                "bid_id": bid_id,
            })),
        )
            .into_response(),
        Placement::KeyReused => {
            state.book.count_rejected();
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency key already used for another posting",
            )
        }
        Placement::BodyChanged => {
            state.book.count_rejected();
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency key already used with a different request body",
            )
        }
    }
}

/// Why a request is refused before placement; becomes a `4xx` JSON answer.
struct Refusal {
    status: StatusCode,
    message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = error(self.status, &self.message);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sandbox\""),
            );
        }
        response
    }
}

fn check_auth(sandbox: &Sandbox, headers: &HeaderMap) -> Result<(), Refusal> {
    let unauthorized = |message: &str| refuse(StatusCode::UNAUTHORIZED, message);
    let presented = header_str(headers, "authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    let Some(presented) = presented else {
        return Err(unauthorized("missing bearer token"));
    };
    match &sandbox.state().token {
        Some(expected) if !constant_time_eq(expected.as_bytes(), presented.as_bytes()) => {
            Err(unauthorized("invalid bearer token"))
        }
        _ => Ok(()),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Refusal> {
    match header_str(headers, "idempotency-key").map(str::trim) {
        Some(key) if !key.is_empty() && key.len() <= 255 => Ok(key.to_owned()),
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            "missing or invalid Idempotency-Key header",
        )),
    }
}

#[derive(serde::Deserialize)]
struct BidBody {
    posting_id: String,
    amount: Amount,
    cover_letter: String,
}

#[derive(serde::Deserialize)]
struct Amount {
    value: String,
    currency: String,
}

fn check_body(key: &PostingKey, headers: &HeaderMap, body: &[u8]) -> Result<BidBody, Refusal> {
    let json_content = header_str(headers, "content-type")
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json_content {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let unprocessable = |message: String| refuse(StatusCode::UNPROCESSABLE_ENTITY, message);
    let parsed: BidBody = serde_json::from_slice(body)
        .map_err(|e| unprocessable(format!("invalid bid body: {e}")))?;
    if parsed.posting_id != key.posting_id() {
        return Err(unprocessable(
            "posting_id in the body does not match the URL".to_owned(),
        ));
    }
    let value = parsed.amount.value.as_str();
    let decimal_text = value
        .split_once('.')
        .map_or((value, "0"), |(int, frac)| (int, frac));
    let is_decimal = [decimal_text.0, decimal_text.1]
        .iter()
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    let positive = is_decimal && Decimal::from_str_exact(value).is_ok_and(|d| d > Decimal::ZERO);
    if !positive {
        return Err(unprocessable(format!(
            "amount.value {value:?} must be a positive decimal string like \"450.00\""
        )));
    }
    let currency = parsed.amount.currency.as_str();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(unprocessable(format!(
            "amount.currency {currency:?} must be an ISO 4217 code like \"USD\""
        )));
    }
    if parsed.cover_letter.chars().count() > MAX_COVER_LETTER_CHARS {
        return Err(unprocessable(format!(
            "cover_letter is longer than {MAX_COVER_LETTER_CHARS} characters"
        )));
    }
    Ok(parsed)
}

impl Sandbox {
    /// Counts a bid request (`bid`) for `posting` — or nothing, for a lookup, counted by its
    /// route — and draws its fault, if any: a scripted one first (bids only), then an outage,
    /// then the dice.
    pub(super) fn take_fault(
        &self,
        posting: &str,
        traceparent: Option<&str>,
        bid: bool,
    ) -> Option<Fault> {
        let mut state = self.state();
        if bid {
            state.book.count_request(posting, traceparent);
        }
        let options = self.options();
        let scripted = if bid {
            state.scripted.pop_front()
        } else {
            None
        };
        let fault = match scripted {
            Some(fault) => Some(fault),
            None if state.outage.is_some() => state.outage.clone(),
            None if options.fail_rate > 0.0 && state.dice.f64() < options.fail_rate => {
                Some(if state.dice.bool() {
                    Fault::unavailable()
                } else {
                    Fault::rate_limited("1")
                })
            }
            None => None,
        };
        if fault.is_some() {
            state.book.count_fault();
        }
        fault
    }
}

pub(super) fn fault_response(fault: &Fault) -> Response {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = error(status, "injected fault");
    if let Some(value) = fault
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads W3C trace context out of HTTP headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        header_str(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}
