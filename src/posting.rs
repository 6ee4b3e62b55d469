//! The posting event: wire JSON parsed and validated at the edge into a [`Posting`].
//!
//! Everything downstream works with validated domain types only. A body that fails here is a
//! poison message: the worker dead-letters it with [`PostingError::reason`] and never retries.
//! Money is read from the JSON text straight into [`Decimal`] — never through a binary float.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::value::RawValue;

/// Largest accepted event body; anything larger is poison (spec: 256 KiB).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Identity of a posting across the whole system: ledger row, lease key, idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PostingKey {
    marketplace: String,
    posting_id: String,
}

impl PostingKey {
    /// Builds a key after validating both parts with the spec's charsets.
    pub fn new(marketplace: &str, posting_id: &str) -> Result<Self, PostingError> {
        validate_marketplace(marketplace)?;
        validate_posting_id(posting_id)?;
        Ok(Self {
            marketplace: marketplace.to_owned(),
            posting_id: posting_id.to_owned(),
        })
    }

    /// The marketplace name, e.g. `upwork`.
    pub fn marketplace(&self) -> &str {
        &self.marketplace
    }

    /// The marketplace's own id of the posting.
    pub fn posting_id(&self) -> &str {
        &self.posting_id
    }

    /// `{marketplace}:{posting_id}` — the `Idempotency-Key` header value.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.marketplace, self.posting_id)
    }

    /// `{m:p}` — the Redis Cluster hash tag keeping a posting's keys in one slot.
    pub fn hash_tag(&self) -> String {
        format!("{{{}:{}}}", self.marketplace, self.posting_id)
    }
}

impl fmt::Display for PostingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.marketplace, self.posting_id)
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
    InvalidField {
        field: &'static str,
        problem: String,
    },
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

    fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::InvalidField {
            field,
            problem: problem.into(),
        }
    }
}

fn validate_marketplace(m: &str) -> Result<(), PostingError> {
    let bytes = m.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
    if first_ok && rest_ok && bytes.len() <= 32 {
        Ok(())
    } else {
        Err(PostingError::invalid(
            "marketplace",
            format!("{m:?} does not match ^[a-z0-9][a-z0-9_-]{{0,31}}$"),
        ))
    }
}

fn validate_posting_id(p: &str) -> Result<(), PostingError> {
    validate_id("posting_id", p)
}

fn validate_id(field: &'static str, v: &str) -> Result<(), PostingError> {
    if v.is_empty() || v.len() > 128 {
        return Err(PostingError::invalid(field, "must be 1 to 128 characters"));
    }
    // Printable ASCII without whitespace: 0x21..=0x7e.
    if let Some(c) = v.chars().find(|c| !('!'..='~').contains(c)) {
        return Err(PostingError::invalid(
            field,
            format!("character {c:?} is not printable ASCII without whitespace"),
        ));
    }
    Ok(())
}

type Fields = BTreeMap<String, Box<RawValue>>;

fn decode<T: serde::de::DeserializeOwned>(
    field: &'static str,
    raw: &RawValue,
) -> Result<T, PostingError> {
    serde_json::from_str(raw.get()).map_err(|e| PostingError::invalid(field, e.to_string()))
}

fn optional<T: serde::de::DeserializeOwned>(
    fields: &Fields,
    field: &'static str,
) -> Result<Option<T>, PostingError> {
    match fields.get(field) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => decode(field, raw).map(Some),
    }
}

fn required_string(fields: &Fields, field: &'static str) -> Result<String, PostingError> {
    match optional::<String>(fields, field)? {
        None => Err(PostingError::MissingField(field)),
        Some(s) => Ok(s),
    }
}

/// Reads an amount from its JSON text: a number literal or a decimal string, never via f64.
fn decimal(field: &'static str, raw: &RawValue) -> Result<Option<Decimal>, PostingError> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    let literal = if text.starts_with('"') {
        decode::<String>(field, raw)?
    } else {
        text.to_owned()
    };
    let value = Decimal::from_str_exact(literal.trim())
        .map_err(|e| PostingError::invalid(field, format!("{literal:?} is not a decimal: {e}")))?;
    if value.is_sign_negative() {
        return Err(PostingError::invalid(field, "must not be negative"));
    }
    Ok(Some(value))
}

fn parse_budget(raw: &RawValue) -> Result<Option<Budget>, PostingError> {
    if raw.get() == "null" {
        return Ok(None);
    }
    let fields: Fields = decode("budget", raw)?;
    let amount = |name: &'static str| match fields.get(name.rsplit('.').next().unwrap_or(name)) {
        Some(raw) => decimal(name, raw),
        None => Ok(None),
    };
    let min = amount("budget.min")?;
    let max = amount("budget.max")?;
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        return Err(PostingError::invalid("budget", "min is greater than max"));
    }
    let currency = optional::<String>(&fields, "currency")?.unwrap_or_else(|| "USD".to_owned());
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(PostingError::invalid(
            "budget.currency",
            format!("{currency:?} is not an ISO 4217 code"),
        ));
    }
    let kind = match optional::<String>(&fields, "kind")?.as_deref() {
        None | Some("fixed") => BudgetKind::Fixed,
        Some("hourly") => BudgetKind::Hourly,
        Some(other) => {
            return Err(PostingError::invalid(
                "budget.kind",
                format!("{other:?} is neither \"fixed\" nor \"hourly\""),
            ));
        }
    };
    Ok(Some(Budget {
        min,
        max,
        currency,
        kind,
    }))
}

fn parse_client(raw: Option<&RawValue>) -> Result<ClientInfo, PostingError> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Ok(ClientInfo::default());
    };
    let fields: Fields = decode("client", raw)?;
    Ok(ClientInfo {
        rating: optional(&fields, "rating")?,
        payment_verified: optional(&fields, "payment_verified")?,
        country: optional(&fields, "country")?,
    })
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
        let fields: Fields =
            serde_json::from_slice(body).map_err(|e| PostingError::InvalidJson(e.to_string()))?;

        let event_id = required_string(&fields, "event_id")?;
        validate_id("event_id", &event_id)?;
        let marketplace = required_string(&fields, "marketplace")?;
        let posting_id = required_string(&fields, "posting_id")?;
        let key = PostingKey::new(&marketplace, &posting_id)?;
        let title = required_string(&fields, "title")?;
        if title.trim().is_empty() {
            return Err(PostingError::invalid("title", "must not be blank"));
        }
        if !is_known_marketplace(&marketplace) {
            return Err(PostingError::UnknownMarketplace(marketplace));
        }
        let budget = match fields.get("budget") {
            Some(raw) => parse_budget(raw)?,
            None => None,
        };
        let posted_at = optional::<String>(&fields, "posted_at")?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| PostingError::invalid("posted_at", format!("{s:?}: {e}")))
            })
            .transpose()?;
        Ok(Self {
            event_id,
            key,
            title,
            description: optional(&fields, "description")?.unwrap_or_default(),
            budget,
            skills: optional(&fields, "skills")?.unwrap_or_default(),
            client: parse_client(fields.get("client").map(|b| b.as_ref()))?,
            posted_at,
            url: optional(&fields, "url")?,
        })
    }
}

/// Formats an amount with two decimals, as the marketplace contract expects (`"450.00"`).
pub fn format_amount(value: Decimal) -> String {
    let mut v =
        value.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    v.rescale(2);
    v.to_string()
}

/// Parses a decimal amount from configuration text (e.g. `"500"`).
pub fn parse_amount(text: &str) -> Result<Decimal, rust_decimal::Error> {
    Decimal::from_str(text.trim())
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

    #[test]
    fn amounts_format_with_two_decimals() {
        assert_eq!(format_amount(Decimal::new(450, 0)), "450.00");
        assert_eq!(format_amount(Decimal::new(12345, 3)), "12.35");
    }
}
