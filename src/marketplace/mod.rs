//! The marketplace port: placing one bid and classifying the answer per the HTTP contract.
//!
//! [`HttpMarketplace`] is the real client; [`sandbox`] is our stand-in server implementing the
//! same contract, used by tests and the demo over real HTTP.

mod classify;
pub mod http;
pub mod sandbox;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::posting::PostingKey;

pub use self::http::HttpMarketplace;

/// One bid to place: the exact JSON body (built once and stored by the ledger, so every attempt
/// sends the same bytes under the same idempotency key).
#[derive(Clone, Debug, PartialEq)]
pub struct BidRequest {
    pub key: PostingKey,
    /// `{"posting_id": …, "amount": {"value": "450.00", "currency": "USD"}, "cover_letter": …}`.
    pub body: String,
    /// W3C trace context (`traceparent`, `tracestate`) to send along, if any.
    pub trace_headers: BTreeMap<String, String>,
}

/// The marketplace's answer, classified by the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BidResult {
    /// `201` (new bid) or `200` (replay of our idempotency key: `replay = true`).
    Placed { bid_id: String, replay: bool },
    /// `409`: a bid for this posting exists under another key. Treated as placed; never retried.
    AlreadyPlaced {
        /// The existing bid's id, when the marketplace names it (the contract does not promise it).
        bid_id: Option<String>,
        detail: String,
    },
    /// `429`: slow down, for `retry_after` if the marketplace said.
    RateLimited { retry_after: Option<Duration> },
    /// `5xx`, `408`, timeout or connection failure: retry later, honouring `retry_after`.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        /// The answer's status; `None` when no answer came (timeout, connection error).
        status: Option<u16>,
    },
    /// `401`, `403` or `407`: our credentials are wrong or revoked — the marketplace is
    /// unavailable to us, the posting is fine. Never recorded as `rejected`.
    Unauthorized { status: u16 },
    /// Any other `4xx`: permanent refusal (a `404` only once the marketplace is known to answer,
    /// see [`crate::flow::breaker`]).
    Rejected { status: u16, body_excerpt: String },
}

impl BidResult {
    /// Short bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Placed { replay: false, .. } => "placed",
            Self::Placed { replay: true, .. } => "replay",
            Self::AlreadyPlaced { .. } => "conflict",
            Self::RateLimited { .. } => "rate_limited",
            Self::Transient { .. } => "transient",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Rejected { .. } => "rejected",
        }
    }
}

/// A marketplace that is not configured, or a client that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum MarketplaceError {
    #[error("marketplace `{0}` is not configured")]
    Unknown(String),
    #[error("marketplace `{marketplace}`: {problem}")]
    Config {
        marketplace: String,
        problem: String,
    },
}

/// Places bids. Network trouble is a [`BidResult::Transient`], not an error.
#[async_trait]
pub trait Marketplace: Send + Sync + 'static {
    /// Sends one bid with `Idempotency-Key: {marketplace}:{posting_id}`.
    async fn place_bid(&self, bid: &BidRequest) -> Result<BidResult, MarketplaceError>;

    /// Whether bids for this marketplace can be placed (it is configured).
    fn knows(&self, marketplace: &str) -> bool;
}
