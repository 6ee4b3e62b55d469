//! `[marketplace]` (how bids are sent) and `[marketplaces.<name>]` (each marketplace: where, with
//! which token and API, how fast), with the defaults a marketplace gets from the lease it runs
//! under.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{EndpointUrl, MarketplaceKind, whole};

/// `[marketplace]`: how bids are sent (where is `[marketplaces.<name>]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MarketplaceClientSettings {
    pub kind: MarketplaceKind,
}

/// Which API a marketplace speaks (`marketplaces.<name>.api`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MarketplaceApi {
    /// bidorch's own bid contract (a team's gateway, the sandbox): idempotency keys, `409`.
    #[default]
    Contract,
    /// The Freelancer.com REST API: no idempotency keys; bids are looked up to verify a send.
    Freelancer,
}

impl MarketplaceApi {
    /// The value as configured (and as kept with a stored request).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contract => "contract",
            Self::Freelancer => "freelancer",
        }
    }
}

/// `[marketplaces.<name>]`: a marketplace needs only `base_url` and `token_env`; every other key
/// has a default that fits the configured `lock.ttl`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MarketplaceSettings {
    /// Shown only redacted (`config check`, `Debug`, errors).
    pub base_url: EndpointUrl,
    /// Name of the environment variable holding the bearer token (the token is never in config).
    pub token_env: String,
    /// Total time for one bid request, connecting included.
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    /// Time to establish the connection.
    #[serde(default, with = "humantime_serde::option")]
    pub connect_timeout: Option<Duration>,
    /// Bid requests per second to this marketplace across the whole fleet (shared in Redis);
    /// unset: no limit. A posting over it waits (no attempt counted).
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Requests the rate limit lets through at once (default 1).
    #[serde(default, deserialize_with = "whole::whole_option")]
    pub rate_burst: Option<u32>,
    /// The API it speaks (default `contract`).
    #[serde(default)]
    pub api: MarketplaceApi,
    /// Freelancer: our user id as bidder; unset, it is read once from `GET /api/users/0.1/self/`.
    #[serde(default, deserialize_with = "whole::whole_option")]
    pub bidder_id: Option<u64>,
    /// Freelancer: the days to deliver in, sent with each bid.
    #[serde(default = "default_bid_period_days", deserialize_with = "whole::whole")]
    pub bid_period_days: u32,
    /// Freelancer: the share of the bid asked as a milestone, sent with each bid.
    #[serde(
        default = "default_milestone_percentage",
        deserialize_with = "whole::whole"
    )]
    pub milestone_percentage: u32,
    /// An API without idempotency keys: how long after a send whose answer was lost it is looked
    /// up (a request still in flight may yet create the bid). Default: twice `timeout`.
    #[serde(default, with = "humantime_serde::option")]
    pub lookup_delay: Option<Duration>,
}

fn default_bid_period_days() -> u32 {
    7
}

fn default_milestone_percentage() -> u32 {
    100
}

impl MarketplaceSettings {
    /// A marketplace at `base_url` whose token is in `token_env`, with default timeouts.
    pub fn new(base_url: url::Url, token_env: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            token_env: token_env.into(),
            timeout: None,
            connect_timeout: None,
            rate_limit: None,
            rate_burst: None,
            api: MarketplaceApi::Contract,
            bidder_id: None,
            bid_period_days: default_bid_period_days(),
            milestone_percentage: default_milestone_percentage(),
            lookup_delay: None,
        }
    }

    /// How long after a lost answer a send is looked up: as configured, else twice the request
    /// timeout.
    pub fn lookup_delay(&self, lock_ttl: Duration) -> Duration {
        self.lookup_delay
            .unwrap_or_else(|| self.timeouts(lock_ttl).0.saturating_mul(2))
    }

    /// The request and connect timeouts: as configured, else the defaults for `lock_ttl` —
    /// together at most half the lease, so a slow call never outlives it — capped at 5 s and 2 s.
    pub fn timeouts(&self, lock_ttl: Duration) -> (Duration, Duration) {
        let budget = lock_ttl / 2;
        let connect = self
            .connect_timeout
            .unwrap_or_else(|| (budget / 4).min(Duration::from_secs(2)));
        let request = self
            .timeout
            .unwrap_or_else(|| budget.saturating_sub(connect).min(Duration::from_secs(5)));
        (request, connect)
    }
}
