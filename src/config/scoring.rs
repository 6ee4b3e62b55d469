//! `[scoring]`: the optional remote scoring service asked about postings the rules would bid on.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to do when the scoring service cannot answer.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnScoringFailure {
    /// The posting waits, like for any unreachable dependency (no attempt counted).
    #[default]
    Wait,
    /// Record the posting `skipped` with reason `scoring_unavailable`.
    Skip,
    /// Bid on the rules alone.
    Rules,
}

/// `[scoring]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ScoringSettings {
    /// `POST` endpoint answering `{"score": 0.0..=1.0}`; empty: no scoring. Shown only redacted.
    #[serde(default)]
    pub url: super::SecretUrl,
    /// Environment variable with a bearer token for it (optional).
    #[serde(default)]
    pub token_env: String,
    /// Bound on one scoring call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Postings scoring below this are skipped (`score_below_threshold`).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default)]
    pub on_failure: OnScoringFailure,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_threshold() -> f64 {
    0.5
}

impl Default for ScoringSettings {
    fn default() -> Self {
        Self {
            url: super::SecretUrl::new(""),
            token_env: String::new(),
            timeout: default_timeout(),
            threshold: default_threshold(),
            on_failure: OnScoringFailure::default(),
        }
    }
}

impl ScoringSettings {
    /// Whether a scoring service is configured.
    pub fn enabled(&self) -> bool {
        !self.url.expose().trim().is_empty()
    }
}
