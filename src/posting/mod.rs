//! The posting event: the wire JSON ([`wire`], derived) converted and validated at the edge into
//! a [`Posting`] (`TryFrom`).
//!
//! Everything downstream works with validated domain types only. A body that fails here is a
//! poison message: the worker dead-letters it with [`PostingError::reason`] and never retries.
//! Money is read from the JSON text straight into [`Decimal`] — never through a binary float.

pub mod wire;

use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// Largest accepted event body; anything larger is poison (spec: 256 KiB).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Identity of a posting across the whole system: ledger row, lease key, idempotency key.
///
/// Held as one shared `{marketplace}:{posting_id}` (a marketplace name has no `:`): a posting's
/// key is cloned into every lease, ledger step and log of its attempt, and a clone is then a
/// reference count instead of two allocations. Ordered as the pair (marketplace, posting id).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PostingKey {
    text: std::sync::Arc<str>,
    /// Where the marketplace ends in `text`.
    split: usize,
}

impl PostingKey {
    /// Builds a key after validating both parts with the spec's charsets.
    pub fn new(marketplace: &str, posting_id: &str) -> Result<Self, PostingError> {
        validate_marketplace(marketplace)?;
        validate_posting_id(posting_id)?;
        let mut text = String::with_capacity(marketplace.len() + 1 + posting_id.len());
        text.push_str(marketplace);
        text.push(':');
        text.push_str(posting_id);
        Ok(Self {
            text: text.into(),
            split: marketplace.len(),
        })
    }

    /// The marketplace name, e.g. `upwork`.
    pub fn marketplace(&self) -> &str {
        &self.text[..self.split]
    }

    /// The marketplace's own id of the posting.
    pub fn posting_id(&self) -> &str {
        &self.text[self.split + 1..]
    }

    /// `{marketplace}:{posting_id}` — the `Idempotency-Key` header value.
    pub fn idempotency_key(&self) -> String {
        self.text.to_string()
    }

    /// `{marketplace}:{posting_id}`, borrowed.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `{m:p}` — the Redis Cluster hash tag keeping a posting's keys in one slot.
    pub fn hash_tag(&self) -> String {
        format!("{{{}}}", self.text)
    }
}

impl Ord for PostingKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.marketplace(), self.posting_id()).cmp(&(other.marketplace(), other.posting_id()))
    }
}

impl PartialOrd for PostingKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for PostingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostingKey")
            .field("marketplace", &self.marketplace())
            .field("posting_id", &self.posting_id())
            .finish()
    }
}

impl fmt::Display for PostingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Fixed-price or hourly budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetKind {
    Fixed,
    Hourly,
}

/// A posting's budget; amounts are exact decimals in `currency`.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub min: Option<Decimal>,
    pub max: Option<Decimal>,
    pub currency: String,
    pub kind: BudgetKind,
}

/// What the posting says about the client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientInfo {
    pub rating: Option<f64>,
    pub payment_verified: Option<bool>,
    pub country: Option<String>,
}

/// A validated posting event.
#[derive(Clone, Debug, PartialEq)]
pub struct Posting {
    pub event_id: String,
    pub key: PostingKey,
    pub title: String,
    pub description: String,
    pub budget: Option<Budget>,
    pub skills: Vec<String>,
    pub client: ClientInfo,
    pub posted_at: Option<DateTime<Utc>>,
    pub url: Option<String>,
    /// What bidding costs in the marketplace's credits, if the publisher says.
    pub bid_cost: Option<Decimal>,
}

/// Why a body is poison. Each variant maps to a stable, bounded [`reason`](Self::reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostingError {
    #[error("event body is {size} bytes, over the {MAX_EVENT_BYTES}-byte limit")]
    TooLarge { size: usize },
    #[error("event body is not a JSON object: {0}")]
    InvalidJson(String),
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` is invalid: {problem}")]
    InvalidField { field: String, problem: String },
    #[error("marketplace `{0}` is not configured")]
    UnknownMarketplace(String),
}

impl PostingError {
    /// Short machine-readable reason for the `x-bidorch-reason` header and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::InvalidJson(_) => "invalid_json",
            Self::MissingField(_) => "missing_field",
            Self::InvalidField { .. } => "invalid_field",
            Self::UnknownMarketplace(_) => "unknown_marketplace",
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

fn validate_marketplace(m: &str) -> Result<(), PostingError> {
    if crate::config::is_marketplace_name(m) {
        Ok(())
    } else {
        Err(PostingError::invalid(
            "marketplace",
            format!("{m:?} does not match ^[a-z0-9][a-z0-9_-]{{0,31}}$"),
        ))
    }
}

fn validate_posting_id(p: &str) -> Result<(), PostingError> {
    validate_id("posting_id", p)?;
    // No URL path can carry these segments: parsers drop them (`%2e%2e` too), so the bid would
    // go to another resource than the posting's.
    if p == "." || p == ".." {
        return Err(PostingError::invalid(
            "posting_id",
            format!("{p:?} cannot be carried by a URL path"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_id(field: &'static str, v: &str) -> Result<(), PostingError> {
    if v.is_empty() || v.len() > 128 {
        return Err(PostingError::invalid(field, "must be 1 to 128 characters"));
    }
    // Printable ASCII without whitespace: 0x21..=0x7e. Checked as bytes (no char decoding);
    // the character is found only to name it.
    if !v.bytes().all(|b| (b'!'..=b'~').contains(&b))
        && let Some(c) = v.chars().find(|c| !('!'..='~').contains(c))
    {
        return Err(PostingError::invalid(
            field,
            format!("character {c:?} is not printable ASCII without whitespace"),
        ));
    }
    Ok(())
}

impl Posting {
    /// Parses and validates one event body. `is_known_marketplace` decides which marketplaces
    /// this deployment bids on; an event for any other is poison.
    pub fn parse(
        body: &[u8],
        is_known_marketplace: impl Fn(&str) -> bool,
    ) -> Result<Self, PostingError> {
        if body.len() > MAX_EVENT_BYTES {
            return Err(PostingError::TooLarge { size: body.len() });
        }
        let posting = Posting::try_from(wire::WireEvent::from_json(body)?)?;
        if !is_known_marketplace(posting.key.marketplace()) {
            return Err(PostingError::UnknownMarketplace(
                posting.key.marketplace().to_owned(),
            ));
        }
        Ok(posting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "event_id": "0b9f6a9e-0c1b-4bb8-9d2a-3c5f1f0e9a11",
      "marketplace": "upwork",
      "posting_id": "job_123",
      "title": "Build a Rust worker",
      "description": "Consume events from RabbitMQ",
      "budget": { "min": 500, "max": 1500.10, "currency": "USD", "kind": "fixed" },
      "skills": ["rust", "redis", "rabbitmq"],
      "client": { "rating": 4.8, "payment_verified": true, "country": "US" },
      "posted_at": "2026-11-26T10:00:00Z",
      "url": "https://example.invalid/jobs/123",
      "unknown_extra": {"ignored": true}
    }"#;

    #[test]
    fn a_key_reads_back_its_parts_and_orders_as_the_pair() {
        let k = |m, p| PostingKey::new(m, p).unwrap();
        let key = k("upwork", "job:1");
        assert_eq!((key.marketplace(), key.posting_id()), ("upwork", "job:1"));
        assert_eq!(key.to_string(), "upwork:job:1");
        assert_eq!(key.idempotency_key(), "upwork:job:1");
        assert_eq!(key.hash_tag(), "{upwork:job:1}");
        assert_eq!(
            format!("{key:?}"),
            r#"PostingKey { marketplace: "upwork", posting_id: "job:1" }"#
        );
        // As the pair, not as the joined text (where `-` sorts before `:`).
        assert!(k("a", "x") < k("a-b", "x"));
        assert!(k("a", "b") < k("a", "c"));
        assert_ne!(k("a", "b:c"), k("a", "b"));
    }

    fn parse(body: &str) -> Result<Posting, PostingError> {
        Posting::parse(body.as_bytes(), |m| m == "upwork")
    }

    #[test]
    fn parses_the_documented_example_exactly() {
        let p = parse(EXAMPLE).expect("example is valid");
        assert_eq!(p.key.to_string(), "upwork:job_123");
        let budget = p.budget.expect("budget present");
        assert_eq!(budget.min, Some(Decimal::new(500, 0)));
        assert_eq!(budget.max, Some(Decimal::new(150010, 2)));
        assert_eq!(budget.kind, BudgetKind::Fixed);
        assert_eq!(p.skills.len(), 3);
        assert_eq!(p.client.payment_verified, Some(true));
        assert!(p.posted_at.is_some());
    }

    #[test]
    fn money_strings_and_literals_stay_exact() {
        let body = r#"{"event_id":"e","marketplace":"upwork","posting_id":"p","title":"t",
            "budget":{"min":"0.10","max":0.30}}"#;
        let b = parse(body).unwrap().budget.unwrap();
        assert_eq!(b.min.unwrap() + Decimal::new(20, 2), b.max.unwrap());
    }

    #[test]
    fn only_required_fields_is_enough() {
        let p = parse(r#"{"event_id":"e1","marketplace":"upwork","posting_id":"p","title":"t"}"#)
            .unwrap();
        assert!(p.budget.is_none());
        assert!(p.skills.is_empty());
    }

    #[test]
    fn poison_cases_name_their_reason() {
        let cases: &[(&str, &str)] = &[
            ("not json", "invalid_json"),
            ("[1,2]", "invalid_json"),
            (
                r#"{"marketplace":"upwork","posting_id":"p","title":"t"}"#,
                "missing_field",
            ),
            (
                r#"{"event_id":"e","posting_id":"p","title":"t"}"#,
                "missing_field",
            ),
            (
                r#"{"event_id":"e","marketplace":"upwork","title":"t"}"#,
                "missing_field",
            ),
            (
                r#"{"event_id":"e","marketplace":"upwork","posting_id":"p"}"#,
                "missing_field",
            ),
            (
                r#"{"event_id":"e","marketplace":"UpWork","posting_id":"p","title":"t"}"#,
                "invalid_field",
            ),
            (
                r#"{"event_id":"e","marketplace":"upwork","posting_id":"a b","title":"t"}"#,
                "invalid_field",
            ),
            (
                r#"{"event_id":"e","marketplace":"upwork","posting_id":"","title":"t"}"#,
                "invalid_field",
            ),
            (
                r#"{"event_id":"e","marketplace":"upwork","posting_id":".","title":"t"}"#,
                "invalid_field",
            ),
            (
                r#"{"event_id":"e","marketplace":"upwork","posting_id":"..","title":"t"}"#,
                "invalid_field",
            ),
            (
                r#"{"event_id":5,"marketplace":"upwork","posting_id":"p","title":"t"}"#,
                "invalid_field",
            ),
            (
                r#"{"event_id":"e","marketplace":"upwork","posting_id":"p","title":"t","budget":{"min":"abc"}}"#,
                "invalid_field",
            ),
            (
                r#"{"event_id":"e","marketplace":"upwork","posting_id":"p","title":"t","budget":{"min":-5}}"#,
                "invalid_field",
            ),
            (
                r#"{"event_id":"e","marketplace":"fiverr","posting_id":"p","title":"t"}"#,
                "unknown_marketplace",
            ),
        ];
        for (body, reason) in cases {
            let err = parse(body).expect_err(body);
            assert_eq!(err.reason(), *reason, "{body}: {err}");
        }
    }

    #[test]
    fn oversized_body_is_poison_before_parsing() {
        let body = vec![b' '; MAX_EVENT_BYTES + 1];
        let err = Posting::parse(&body, |_| true).unwrap_err();
        assert_eq!(err.reason(), "too_large");
    }

    #[test]
    fn posting_id_length_limit() {
        let long = "x".repeat(129);
        assert!(PostingKey::new("upwork", &long).is_err());
        assert!(PostingKey::new("upwork", &"x".repeat(128)).is_ok());
    }

    #[test]
    fn keys_format_for_each_layer() {
        let k = PostingKey::new("upwork", "job_1").unwrap();
        assert_eq!(k.idempotency_key(), "upwork:job_1");
        assert_eq!(k.hash_tag(), "{upwork:job_1}");
    }
}
