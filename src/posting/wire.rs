//! The posting event as it travels: a derived [`WireEvent`] (every field optional, unknown fields
//! ignored) and its `TryFrom` into a validated [`Posting`].
//!
//! Deserialising only checks JSON types; what the contract requires (required fields, charsets,
//! ISO currencies, `min <= max`) is checked in the conversion, each failure naming its field. A
//! type error names its field too: the path comes from `serde_path_to_error`. Amounts are read
//! from their JSON text ([`WireAmount`]), never through `f64`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Budget, BudgetKind, ClientInfo, Posting, PostingError, PostingKey, validate_id};

/// The event body, field for field (spec: "Posting event").
#[derive(Debug, Default, Deserialize)]
pub struct WireEvent {
    pub event_id: Option<String>,
    pub marketplace: Option<String>,
    pub posting_id: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub budget: Option<WireBudget>,
    pub skills: Option<Vec<String>>,
    pub client: Option<WireClient>,
    pub posted_at: Option<String>,
    pub url: Option<String>,
    /// What bidding on it costs in the marketplace's credits (`[bidding.budget] cost = "event"`).
    pub bid_cost: Option<WireAmount>,
}

/// `budget`.
#[derive(Debug, Default, Deserialize)]
pub struct WireBudget {
    pub min: Option<WireAmount>,
    pub max: Option<WireAmount>,
    pub currency: Option<String>,
    pub kind: Option<String>,
}

/// `client`.
#[derive(Debug, Default, Deserialize)]
pub struct WireClient {
    pub rating: Option<f64>,
    pub payment_verified: Option<bool>,
    pub country: Option<String>,
}

/// An amount as a JSON number literal or a decimal string, read exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireAmount(pub Decimal);

impl<'de> Deserialize<'de> for WireAmount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The raw JSON text of the value: `1500.10` stays `1500.10`, not the nearest f64.
        // Borrowed from the body, as is a string amount without escapes.
        let raw = <&RawValue>::deserialize(d)?;
        let text = raw.get();
        let literal: std::borrow::Cow<'_, str> = match text.strip_prefix('"') {
            Some(_) => serde_json::from_str(text).map_err(serde::de::Error::custom)?,
            None => text.into(),
        };
        let value = Decimal::from_str_exact(literal.trim()).map_err(|e| {
            serde::de::Error::custom(format!("{literal:?} is not a decimal amount: {e}"))
        })?;
        if value.is_sign_negative() {
            return Err(serde::de::Error::custom("must not be negative"));
        }
        Ok(Self(value))
    }
}

impl WireEvent {
    /// Deserialises a body: not JSON, or not an object, is [`PostingError::InvalidJson`]; a field
    /// of the wrong type is [`PostingError::InvalidField`] naming it (`budget.min`).
    pub fn from_json(body: &[u8]) -> Result<Self, PostingError> {
        // serde would also read a struct from a JSON array (positionally): refuse it up front.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            let parsed = serde_json::from_slice::<serde::de::IgnoredAny>(body);
            return Err(PostingError::InvalidJson(match parsed {
                Err(e) => e.to_string(),
                Ok(_) => "the event is not a JSON object".to_owned(),
            }));
        }
        // Nearly every event parses: it goes through serde_json alone, from a `str` checked once
        // (from bytes, serde_json checks each string it reads again: twice the cost). Only one
        // that does not is read again with serde_path_to_error, which names the field at fault
        // but costs three times as much on every event it reads.
        if let Ok(event) = std::str::from_utf8(body).map(serde_json::from_str::<Self>)
            && let Ok(event) = event
        {
            return Ok(event);
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed: Result<Self, _> = serde_path_to_error::deserialize(&mut de);
        let event = parsed.map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || inner.is_syntax() || inner.is_eof() {
                PostingError::InvalidJson(inner.to_string())
            } else {
                PostingError::invalid(path, inner.to_string())
            }
        })?;
        de.end()
            .map_err(|e| PostingError::InvalidJson(e.to_string()))?;
        Ok(event)
    }
}

fn required(value: Option<String>, field: &'static str) -> Result<String, PostingError> {
    value.ok_or(PostingError::MissingField(field))
}

impl TryFrom<WireEvent> for Posting {
    type Error = PostingError;

    fn try_from(w: WireEvent) -> Result<Self, PostingError> {
        let event_id = required(w.event_id, "event_id")?;
        validate_id("event_id", &event_id)?;
        let marketplace = required(w.marketplace, "marketplace")?;
        let posting_id = required(w.posting_id, "posting_id")?;
        let key = PostingKey::new(&marketplace, &posting_id)?;
        let title = required(w.title, "title")?;
        if title.trim().is_empty() {
            return Err(PostingError::invalid("title", "must not be blank"));
        }
        let posted_at = w
            .posted_at
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| PostingError::invalid("posted_at", format!("{s:?}: {e}")))
            })
            .transpose()?;
        let client = w.client.unwrap_or_default();
        Ok(Self {
            event_id,
            key,
            title,
            description: w.description.unwrap_or_default(),
            budget: w.budget.map(Budget::try_from).transpose()?,
            skills: w.skills.unwrap_or_default(),
            client: ClientInfo {
                rating: client.rating,
                payment_verified: client.payment_verified,
                country: client.country,
            },
            posted_at,
            url: w.url,
            bid_cost: w.bid_cost.map(|c| c.0),
        })
    }
}

impl TryFrom<WireBudget> for Budget {
    type Error = PostingError;

    fn try_from(w: WireBudget) -> Result<Self, PostingError> {
        let (min, max) = (w.min.map(|a| a.0), w.max.map(|a| a.0));
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            return Err(PostingError::invalid("budget", "min is greater than max"));
        }
        let currency = w.currency.unwrap_or_else(|| "USD".to_owned());
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(PostingError::invalid(
                "budget.currency",
                format!("{currency:?} is not an ISO 4217 code"),
            ));
        }
        let kind = match w.kind.as_deref() {
            None | Some("fixed") => BudgetKind::Fixed,
            Some("hourly") => BudgetKind::Hourly,
            Some(other) => {
                return Err(PostingError::invalid(
                    "budget.kind",
                    format!("{other:?} is neither \"fixed\" nor \"hourly\""),
                ));
            }
        };
        Ok(Self {
            min,
            max,
            currency,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_name_their_field() {
        let err = WireEvent::from_json(br#"{"budget":{"min":"abc"}}"#).unwrap_err();
        assert!(
            matches!(&err, PostingError::InvalidField { field, .. } if field == "budget.min"),
            "{err}"
        );
        let err = WireEvent::from_json(br#"{"event_id":5}"#).unwrap_err();
        assert!(
            matches!(&err, PostingError::InvalidField { field, .. } if field == "event_id"),
            "{err}"
        );
    }

    #[test]
    fn trailing_garbage_and_non_objects_are_invalid_json() {
        for body in [&b"{} x"[..], b"[1,2]", b"\"text\"", b"{"] {
            let err = WireEvent::from_json(body).unwrap_err();
            assert_eq!(err.reason(), "invalid_json", "{err}");
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_invalid_json_and_utf8_text_is_read() {
        let err = WireEvent::from_json(b"{\"event_id\":\"ab\xff\"}").unwrap_err();
        assert_eq!(err.reason(), "invalid_json", "{err}");
        let w = WireEvent::from_json("{\"title\":\"Caf\u{e9} \\u00e9\"}".as_bytes()).unwrap();
        assert_eq!(w.title.as_deref(), Some("Caf\u{e9} \u{e9}"));
    }

    #[test]
    fn amounts_are_exact_from_numbers_and_strings() {
        let w = WireEvent::from_json(br#"{"budget":{"min":0.1,"max":"1500.10"}}"#).unwrap();
        let b = w.budget.unwrap();
        assert_eq!(b.min, Some(WireAmount(Decimal::new(1, 1))));
        assert_eq!(b.max, Some(WireAmount(Decimal::new(150010, 2))));
    }
}
