//! Flow control: waiting is not failing.
//!
//! When a dependency cannot do its part, postings wait — they are never failed, parked or
//! counted for it — and the worker stops taking work it cannot do, then resumes by itself:
//! - [`gate`]: the lock store or the ledger is unreachable → the worker pauses consumption,
//!   probes the dependency with backoff, and resumes when it answers.
//! - [`breaker`]: a marketplace that is down, refuses our credentials, rate limits us or answers
//!   404 for everything is paused on its own (others keep going) and probed one call at a time.
//!
//! Each pause is announced once (WARN when it starts, INFO when it ends, never one line per
//! posting), shown by `/readyz`, and exported as `bidorch_paused{dependency, reason}` = 1.

pub mod breaker;
pub mod gate;

use std::time::Instant;

pub use self::breaker::{BreakerSettings, Breakers, Permit, ProbeGuard, Signal, Verdict};
pub use self::gate::{Dependency, Gate, GateWatch};

use crate::metrics::PAUSED;

/// Why something is paused. Bounded (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PauseReason {
    /// It does not answer (connection refused, timeouts, 5xx).
    Unavailable,
    /// It refuses our credentials (401, 403, 407).
    Credentials,
    /// It asked us to slow down (429).
    RateLimited,
    /// It answers 404 for everything: its `base_url` is wrong.
    NotFound,
    /// An operator paused it (`bidorch pause`), or the pause state is not known.
    Manual,
}

impl PauseReason {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Credentials => "credentials",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::Manual => "manual",
        }
    }
}

/// One paused dependency, for `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paused {
    /// `lock_store`, `ledger` or `marketplace:{name}`.
    pub dependency: String,
    pub reason: PauseReason,
    pub since: Instant,
}

/// The one place a pause starts: one WARN and the gauge raised.
pub(crate) fn announce_pause(dependency: &str, reason: PauseReason, detail: &str) {
    metrics::gauge!(PAUSED, "dependency" => dependency.to_owned(), "reason" => reason.label())
        .set(1.0);
    tracing::warn!(
        dependency,
        reason = reason.label(),
        detail,
        "Paused: postings that need it wait (no attempts counted) until it answers"
    );
}

/// The one place a pause ends: one INFO and the gauge lowered.
pub(crate) fn announce_resume(dependency: &str, reason: PauseReason, since: Instant) {
    metrics::gauge!(PAUSED, "dependency" => dependency.to_owned(), "reason" => reason.label())
        .set(0.0);
    tracing::info!(
        dependency,
        reason = reason.label(),
        paused_for = %humantime::format_duration(round_to_ms(since.elapsed())),
        "Resumed: it answers again"
    );
}

fn round_to_ms(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
