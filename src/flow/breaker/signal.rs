//! The breaker's vocabulary: what an answer signals, what a caller may do, and the settings.

use std::time::Duration;

use super::ProbeGuard;
use crate::flow::PauseReason;

/// Consecutive transient answers (5xx, timeouts) across postings that pause a marketplace.
pub const DEFAULT_TRIP_AFTER: u32 = 5;
/// Consecutive 404s across postings that mean a misconfigured `base_url`.
pub const NOT_FOUND_TRIP_AFTER: u32 = 3;

/// How one marketplace answered, as far as its health is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// An answer about the posting (2xx, 409, a 4xx other than the ones below): it works.
    Answered,
    /// 5xx, 408, a timeout or a connection failure.
    Transient,
    /// 429; with `Retry-After`, the marketplace said how long.
    RateLimited { retry_after: Option<Duration> },
    /// 401, 403 or 407: our credentials, not the posting.
    Unauthorized,
    /// 404.
    NotFound,
}

/// What the breaker says about one marketplace call.
#[derive(Debug)]
pub enum Permit {
    /// Closed: call.
    Go,
    /// Probing a paused marketplace: this call is the probe. Report its answer with
    /// [`Breakers::record`]; dropping the guard unanswered lets the next caller probe.
    Probe(ProbeGuard),
    /// Paused: do not call; try again after `retry_in`.
    Wait {
        retry_in: Duration,
        reason: PauseReason,
    },
}

/// What [`Breakers::record`] concluded about the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether a transient answer counts as one of the posting's own failures (towards
    /// `amqp.max_attempts`): only while the marketplace is otherwise healthy.
    pub counts: bool,
    /// Whether a 404 may be trusted as "this posting does not exist" (the marketplace has
    /// answered something else before, so `base_url` is right).
    pub not_found_is_final: bool,
}

impl Signal {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Self::Answered => "it answered",
            Self::Transient => "consecutive 5xx answers, timeouts or connection failures",
            Self::RateLimited { .. } => "429 Too Many Requests",
            Self::Unauthorized => "401/403/407: the token is wrong, expired or revoked",
            Self::NotFound => "404 for every posting: is base_url right?",
        }
    }
}

/// Breaker settings.
#[derive(Clone, Copy, Debug)]
pub struct BreakerSettings {
    pub trip_after: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            trip_after: DEFAULT_TRIP_AFTER,
            min_backoff: Duration::from_secs(1),
            // Past this a recovery would wait too long to be noticed: probes are cheap.
            max_backoff: Duration::from_secs(30),
        }
    }
}
