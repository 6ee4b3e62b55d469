//! The marketplace port: building a bid request in a marketplace API's own words, placing it,
//! looking a bid up, and classifying the answers — whatever API each marketplace speaks.
//!
//! The pipeline talks to [`Marketplace`] only. Each configured marketplace speaks one API
//! (`marketplaces.<name>.api`), an adapter module each: [`contract`] (bidorch's bid contract:
//! idempotency keys, `409`) and [`freelancer`] (the Freelancer.com REST API: no idempotency
//! keys, bids looked up by project). [`HttpMarketplace`] (`client.rs`) holds them and the one HTTP
//! client they share. [`sandbox`] is our stand-in server speaking both APIs, used by tests and
//! the demo over real HTTP.
//!
//! What each API can do ([`Capabilities`]) decides how a posting whose answer was lost is
//! settled: an API with idempotency keys takes the same request again; one without is asked
//! whether our bid exists first (verify before resend, `pipeline/verify.rs`).

mod classify;
mod client;
pub mod contract;
pub mod freelancer;
pub mod sandbox;
mod transport;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use rust_decimal::Decimal;

use crate::ledger::StoredRequest;
use crate::posting::PostingKey;

pub use self::client::HttpMarketplace;

/// What a marketplace's API can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// A repeated request under the same idempotency key replays the first one's bid.
    pub idempotency_keys: bool,
    /// A posting's bid by us can be looked up.
    pub lookup: bool,
    /// How long after a send whose answer was lost the bid is looked up
    /// (`marketplaces.<name>.lookup_delay`): a request still in flight may yet create it.
    pub lookup_delay: Duration,
}

impl Capabilities {
    /// Whether a send whose answer was lost must be looked up before anything else happens to
    /// the posting (no idempotency key would make a resend harmless).
    pub fn verifies(&self) -> bool {
        !self.idempotency_keys
    }
}

/// The terms of a bid, as the policy decided them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BidTerms {
    /// In the currency's minor unit already (`450.00`, `60000` JPY).
    pub amount: Decimal,
    pub currency: String,
    pub cover_letter: String,
}

/// One bid to send: the exact request body (built once by the API adapter and stored by the
/// ledger, so every attempt sends the same bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct BidRequest {
    pub key: PostingKey,
    /// The API the body is written for (`contract`, `freelancer`).
    pub api: String,
    pub body: String,
    /// W3C trace context (`traceparent`, `tracestate`) to send along, if any.
    pub trace_headers: BTreeMap<String, String>,
}

/// The marketplace's answer to a bid, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BidResult {
    /// A bid exists: new (`201`, Freelancer's `200`) or a replay of our idempotency key (`200`:
    /// `replay = true`).
    Placed { bid_id: String, replay: bool },
    /// `409`: a bid for this posting exists under another key. Treated as placed; never retried.
    AlreadyPlaced {
        /// The existing bid's id, when the marketplace names it (the contract does not promise it).
        bid_id: Option<String>,
        detail: String,
    },
    /// `429`: slow down, for `retry_after` if the marketplace said. Nothing was created.
    RateLimited { retry_after: Option<Duration> },
    /// `5xx`, `408`, a timeout or a connection failure: retry later, honouring `retry_after`.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        /// The answer's status; `None` when no answer came (timeout, connection error).
        status: Option<u16>,
        /// Whether the request may have reached the marketplace: `false` only when it provably
        /// did not (the connection was never made), so nothing can have been created.
        reached: bool,
    },
    /// `401`, `403` or `407`: our credentials are wrong or revoked — the marketplace is
    /// unavailable to us, the posting is fine. Never recorded as `rejected`; nothing created.
    Unauthorized { status: u16 },
    /// Any other `4xx`: refusal of this posting (a `404` only once the marketplace is known to
    /// answer, see [`crate::flow::breaker`]). Against an API without idempotency keys it may be
    /// "you already bid": the pipeline looks our bid up before recording `rejected`.
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

/// A lookup of our bid on one posting.
#[derive(Clone, Debug, PartialEq)]
pub struct LookupRequest {
    pub key: PostingKey,
    /// W3C trace context to send along (the posting's trace).
    pub trace_headers: BTreeMap<String, String>,
}

/// What a lookup of our bid found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Our bid exists, not retracted.
    Found { bid_id: String },
    /// The posting has no bid of ours.
    NotFound,
    /// The marketplace says the posting does not exist (`404` for the project).
    Gone,
    /// The marketplace could not answer (timeout, `5xx`, `401`/`403`, `429`): nothing is known.
    Unanswered { reason: String, status: Option<u16> },
}

impl Lookup {
    /// Short bounded label for spans and the attempt history.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Found { .. } => "found",
            Self::NotFound => "not_found",
            Self::Gone => "gone",
            Self::Unanswered { .. } => "unanswered",
        }
    }
}

/// Why no request could be built for a posting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestRefusal {
    /// The API cannot bid on this posting (a reason code for the skip, e.g.
    /// `posting_id_unsupported`).
    Unsupported(&'static str),
    /// Something the request needs could not be learnt now (the Freelancer bidder id): wait.
    Unavailable(String),
}

/// What `config check --live` learnt about one marketplace, without bidding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveCheck {
    /// Whether everything checked answered as it should.
    pub ok: bool,
    /// What was checked and what it said, for the operator.
    pub detail: String,
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
    /// A stored request written for another API than the marketplace speaks now.
    #[error(
        "marketplace `{marketplace}`: the stored request was written for the `{stored}` API, \
         it is configured for `{configured}` now"
    )]
    ApiChanged {
        marketplace: String,
        stored: String,
        configured: String,
    },
}

/// The marketplaces this deployment bids on, whatever API each speaks.
#[async_trait]
pub trait Marketplace: Send + Sync + 'static {
    /// Whether bids for `marketplace` can be placed (it is configured).
    fn knows(&self, marketplace: &str) -> bool;

    /// What `marketplace`'s API can do; `None` when it is not configured.
    fn capabilities(&self, marketplace: &str) -> Option<Capabilities>;

    /// The request to store and send for a bid on `key`, in the API's own words.
    async fn request_for(
        &self,
        key: &PostingKey,
        terms: &BidTerms,
    ) -> Result<Result<StoredRequest, RequestRefusal>, MarketplaceError>;

    /// Sends one stored request (with `Idempotency-Key: {marketplace}:{posting_id}` where the
    /// API has them). Network trouble is a [`BidResult::Transient`], not an error.
    async fn place_bid(&self, bid: &BidRequest) -> Result<BidResult, MarketplaceError>;

    /// Looks our bid on a posting up (an API with [`Capabilities::lookup`]).
    async fn find_bid(&self, lookup: &LookupRequest) -> Result<Lookup, MarketplaceError>;

    /// Checks `marketplace`'s credentials and reachability without bidding
    /// (`bidorch config check --live`).
    async fn check(&self, marketplace: &str) -> Result<LiveCheck, MarketplaceError>;
}
