//! `[bidding.budget]`: the credits bids may spend per period, and what one bid costs. Only
//! shapes and parsing live here, as for the rest of `[bidding]`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// `[bidding.budget]`: credits per period that bids may spend, per marketplace (the global table
/// gives each marketplace a pool of its own).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BudgetSettings {
    /// Credits each period allows (a non-negative decimal).
    #[serde(deserialize_with = "super::de_amount", serialize_with = "decimal_text")]
    pub credits: Decimal,
    /// `day`, `week` (from Monday) or `month`, UTC calendar.
    pub period: BudgetPeriod,
    /// What one bid costs: a number, or `"event"` for the posting event's `bid_cost`.
    pub cost: BidCost,
    /// With `cost = "event"`: the cost of an event without `bid_cost`.
    #[serde(
        default = "one",
        deserialize_with = "super::de_amount",
        serialize_with = "decimal_text"
    )]
    pub default_cost: Decimal,
}

fn one() -> Decimal {
    Decimal::ONE
}

fn decimal_text<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.to_string())
}

/// A budget's calendar period (UTC).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    /// From Monday.
    Week,
    Month,
}

impl BudgetPeriod {
    /// The first day of the period `day` is in.
    pub fn start_of(self, day: chrono::NaiveDate) -> chrono::NaiveDate {
        use chrono::Datelike;
        match self {
            Self::Day => day,
            Self::Week => day - chrono::Days::new(u64::from(day.weekday().num_days_from_monday())),
            Self::Month => day.with_day(1).unwrap_or(day),
        }
    }

    /// The label (`day`, `week`, `month`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }
}

/// What one bid costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BidCost {
    /// The same for every bid.
    Fixed(Decimal),
    /// The posting event's `bid_cost`.
    Event,
}

impl<'de> Deserialize<'de> for BidCost {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a decimal cost (\"4\") or \"event\""))?
        {
            Raw::Int(n) => Ok(Self::Fixed(Decimal::from(n))),
            Raw::Text(t) if t.trim().eq_ignore_ascii_case("event") => Ok(Self::Event),
            Raw::Text(t) => t.trim().parse::<Decimal>().map(Self::Fixed).map_err(|_| {
                serde::de::Error::custom(format!(
                    "expected a decimal cost (\"4\") or \"event\", got {t:?}"
                ))
            }),
        }
    }
}

impl Serialize for BidCost {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(d) => s.serialize_str(&d.to_string()),
            Self::Event => s.serialize_str("event"),
        }
    }
}
