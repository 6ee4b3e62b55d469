//! The optional remote scoring service: one more opinion on a posting the rules would bid on.
//!
//! The contract: `POST {scoring.url}` with the posting as JSON (`marketplace`, `posting_id`,
//! `title`, `description`, `skills`, `budget`), optionally with a bearer token; the answer is
//! `200 {"score": x}` with `0 <= x <= 1`. Anything else — a timeout, a 5xx, a malformed body —
//! is a failure, handled as `scoring.on_failure` says. The pipeline calls it through the
//! [`Scorer`] port.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::ScoringSettings;
use crate::posting::Posting;

/// Why a posting could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error("scoring service: {0}")]
    Unavailable(String),
    #[error("scoring configuration: {0}")]
    Config(String),
}

/// Asks how good a posting is, from 0 (never) to 1 (certainly).
#[async_trait]
pub trait Scorer: Send + Sync + 'static {
    async fn score(&self, posting: &Posting) -> Result<f64, ScoringError>;
}

#[derive(Serialize)]
struct ScoreRequest<'a> {
    marketplace: &'a str,
    posting_id: &'a str,
    title: &'a str,
    description: &'a str,
    skills: &'a [String],
    budget: Option<BudgetView>,
}

#[derive(Serialize)]
struct BudgetView {
    min: Option<String>,
    max: Option<String>,
    currency: String,
}

#[derive(Deserialize)]
struct ScoreAnswer {
    score: f64,
}

/// The scoring service over HTTP.
pub struct HttpScorer {
    client: reqwest::Client,
    url: url::Url,
    token: Option<SecretString>,
}

impl HttpScorer {
    /// Builds the client from `[scoring]`; `token_of` reads `token_env`.
    pub fn new(
        settings: &ScoringSettings,
        token_of: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ScoringError> {
        crate::tls::install_default_provider();
        let url = url::Url::parse(settings.url.expose().trim())
            .map_err(|e| ScoringError::Config(format!("scoring.url: {e}")))?;
        let token = if settings.token_env.is_empty() {
            None
        } else {
            let token = token_of(&settings.token_env)
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| {
                    ScoringError::Config(format!(
                        "scoring.token_env: environment variable `{}` is not set or empty",
                        settings.token_env
                    ))
                })?;
            Some(SecretString::from(token))
        };
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ScoringError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client, url, token })
    }
}

#[async_trait]
impl Scorer for HttpScorer {
    async fn score(&self, posting: &Posting) -> Result<f64, ScoringError> {
        let body = ScoreRequest {
            marketplace: posting.key.marketplace(),
            posting_id: posting.key.posting_id(),
            title: &posting.title,
            description: &posting.description,
            skills: &posting.skills,
            budget: posting.budget.as_ref().map(|b| BudgetView {
                min: b.min.map(|d| d.to_string()),
                max: b.max.map(|d| d.to_string()),
                currency: b.currency.clone(),
            }),
        };
        let mut request = self.client.post(self.url.clone()).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        // reqwest's errors name the URL, never the token.
        let response = request
            .send()
            .await
            .map_err(|e| ScoringError::Unavailable(crate::error::chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ScoringError::Unavailable(format!("HTTP {status}")));
        }
        let answer: ScoreAnswer = response
            .json()
            .await
            .map_err(|e| ScoringError::Unavailable(format!("malformed answer: {e}")))?;
        if !(0.0..=1.0).contains(&answer.score) {
            return Err(ScoringError::Unavailable(format!(
                "score {} is outside 0..=1",
                answer.score
            )));
        }
        Ok(answer.score)
    }
}
