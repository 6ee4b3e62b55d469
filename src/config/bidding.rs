//! `[bidding]`: the should-bid rules as configured — a base rule set, per-kind pricing
//! (`[bidding.fixed]`, `[bidding.hourly]`) and per-marketplace overrides
//! (`[bidding.marketplaces.<name>]`). Only shapes and parsing live here; what the values mean
//! and how they are checked is [`crate::policy`]'s business (`Policy::new` names the key at fault).

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::budget::BudgetSettings;

/// An amount that applies to every currency (`"500"`), or one amount per currency
/// (`{ USD = "500", JPY = "60000" }`; a currency missing from the table has no such bound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Money {
    /// The same number whatever the posting's currency.
    Any(Decimal),
    /// Per ISO 4217 code, upper-cased when read.
    PerCurrency(BTreeMap<String, Decimal>),
}

impl Money {
    /// The amount for `currency`, if this bound has one.
    pub fn for_currency(&self, currency: &str) -> Option<Decimal> {
        match self {
            Self::Any(v) => Some(*v),
            Self::PerCurrency(map) => map.get(currency).copied(),
        }
    }

    /// Every amount, with the currency it is for (`None`: any currency).
    pub fn amounts(&self) -> Vec<(Option<&str>, Decimal)> {
        match self {
            Self::Any(v) => vec![(None, *v)],
            Self::PerCurrency(map) => map.iter().map(|(c, v)| (Some(c.as_str()), *v)).collect(),
        }
    }
}

impl From<Decimal> for Money {
    fn from(v: Decimal) -> Self {
        Self::Any(v)
    }
}

impl From<i64> for Money {
    fn from(v: i64) -> Self {
        Self::Any(Decimal::from(v))
    }
}

/// How `required_skills` must match.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SkillsMatch {
    /// At least one of them.
    #[default]
    Any,
    /// Every one of them.
    All,
}

/// Budget range and bid amount keys, settable per kind (`[bidding.fixed]`, `[bidding.hourly]`,
/// and the same under a marketplace). A key left out falls back to the less specific layer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PricingOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_budget: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid_fraction: Option<Fraction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid_floor: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid_ceiling: Option<Money>,
}

/// `[bidding.marketplaces.<name>]`: any rule key, overriding the base for that marketplace only.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BiddingOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_budget: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid_fraction: Option<Fraction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid_floor: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid_ceiling: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_currencies: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_skills: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_skills_match: Option<SkillsMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_keywords: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_client_rating: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_payment_verified: Option<bool>,
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_posting_age: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_client_countries: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_client_countries: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "super::whole::whole_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub daily_bid_cap: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cover_letter: Option<String>,
    #[serde(
        default,
        deserialize_with = "super::whole::whole_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub cover_letter_max_chars: Option<usize>,
    #[serde(default)]
    pub fixed: PricingOverrides,
    #[serde(default)]
    pub hourly: PricingOverrides,
    /// `[bidding.marketplaces.<name>.budget]`: this marketplace's credit budget, replacing the
    /// global one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSettings>,
}

/// `[bidding]`. [`Default`] is `config/default.toml`'s `[bidding]` (a test keeps them equal), so
/// code that builds settings by hand writes only what differs:
/// `BiddingSettings { min_budget: 100.into(), ..BiddingSettings::default() }`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BiddingSettings {
    /// Skip when the budget (max, else min) is below it (spec key).
    pub min_budget: Money,
    /// Skip when the budget (min, else max) is above it; `None`: no upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<Money>,
    /// Bid this fraction of the budget (max, else min): above 0, at most 1.
    pub bid_fraction: Fraction,
    /// Lowest bid (never above the posting's max); `None`: no floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid_floor: Option<Money>,
    /// Highest bid; `None`: no ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid_ceiling: Option<Money>,
    /// ISO 4217 codes to bid in; empty: any.
    pub allowed_currencies: Vec<String>,
    /// Skills the posting must list (case-insensitive), `required_skills_match` of them.
    pub required_skills: Vec<String>,
    pub required_skills_match: SkillsMatch,
    /// Skip when a keyword appears as whole words in the title, description or skills (spec key).
    pub blocked_keywords: Vec<String>,
    /// Skip clients rated below this (or not rated); `None`: no rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_client_rating: Option<f64>,
    /// Skip clients not known to have verified payment.
    pub require_payment_verified: bool,
    /// Skip postings older than this at decision time (or undated); `None`: no rule.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_posting_age: Option<Duration>,
    /// ISO 3166-1 alpha-2 client countries to bid for; empty: any.
    pub allowed_client_countries: Vec<String>,
    /// Client countries never to bid for.
    pub blocked_client_countries: Vec<String>,
    /// Bids per marketplace per UTC day, fleet-wide (spec key); 0: no cap.
    #[serde(deserialize_with = "super::whole::whole")]
    pub daily_bid_cap: u64,
    /// minijinja template of the cover letter.
    pub cover_letter: String,
    /// Longer letters are cut to this many characters, ending in "…".
    #[serde(deserialize_with = "super::whole::whole")]
    pub cover_letter_max_chars: usize,
    /// `[bidding.fixed]`: pricing for fixed-price postings.
    #[serde(default)]
    pub fixed: PricingOverrides,
    /// `[bidding.hourly]`: pricing for hourly postings (amounts are rates).
    #[serde(default)]
    pub hourly: PricingOverrides,
    /// `[bidding.marketplaces.<name>]`.
    #[serde(default)]
    pub marketplaces: BTreeMap<String, BiddingOverrides>,
    /// `[bidding.budget]`: each marketplace's credit budget; unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSettings>,
}

impl Default for BiddingSettings {
    fn default() -> Self {
        Self {
            min_budget: Money::Any(Decimal::ZERO),
            max_budget: None,
            bid_fraction: Fraction(Decimal::ONE),
            bid_floor: None,
            bid_ceiling: None,
            allowed_currencies: Vec::new(),
            required_skills: Vec::new(),
            required_skills_match: SkillsMatch::Any,
            blocked_keywords: Vec::new(),
            min_client_rating: None,
            require_payment_verified: false,
            max_posting_age: None,
            allowed_client_countries: Vec::new(),
            blocked_client_countries: Vec::new(),
            daily_bid_cap: 0,
            cover_letter: "Hello! I read \"{{ title }}\" and would love to help.".to_owned(),
            cover_letter_max_chars: 5000,
            fixed: PricingOverrides::default(),
            hourly: PricingOverrides::default(),
            marketplaces: BTreeMap::new(),
            budget: None,
        }
    }
}

/// A decimal fraction (`"0.9"`), read exactly like money: never through a binary float.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fraction(pub Decimal);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::de_amount(d).map(Self)
    }
}

impl Serialize for Fraction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Amount(#[serde(deserialize_with = "super::de_amount")] Decimal);
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(Amount),
            Table(BTreeMap<String, Amount>),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a decimal amount (\"500\", for every currency) or a table of them by \
                 currency ({ USD = \"500\", JPY = \"60000\" })",
            )
        })? {
            Raw::One(a) => Ok(Self::Any(a.0)),
            // The config loader may lower-case table keys; currencies are upper-case codes.
            Raw::Table(t) => Ok(Self::PerCurrency(
                t.into_iter()
                    .map(|(c, a)| (c.trim().to_ascii_uppercase(), a.0))
                    .collect(),
            )),
        }
    }
}

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any(v) => s.serialize_str(&v.to_string()),
            Self::PerCurrency(map) => s.collect_map(map.iter().map(|(c, v)| (c, v.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Settings;

    /// Loads as every command does: the layers, then whether `[bidding]` makes a policy.
    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, crate::app::StartError> {
        let path = std::env::temp_dir().join(format!(
            "bidorch-bidding-{}-{}.toml",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, toml).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let loaded = crate::app::load_settings_from(Some(&path), &env);
        std::fs::remove_file(&path).ok();
        loaded
    }

    const UPWORK: &str = "[marketplaces.upwork]\nbase_url = \"http://mk.test/u\"\n\
                          token_env = \"UPWORK_TOKEN\"\n";

    #[test]
    fn default_is_the_default_file() {
        let s = Settings::load_from(None, &HashMap::new()).unwrap();
        assert_eq!(s.bidding, BiddingSettings::default());
    }

    #[test]
    fn per_currency_tables_kinds_and_marketplace_overrides_load() {
        let s = load(
            &format!(
                "{UPWORK}
                [bidding]
                min_budget = {{ USD = \"500\", jpy = 60000 }}
                max_posting_age = \"2h\"
                min_client_rating = 4.5
                [bidding.hourly]
                min_budget = \"25\"
                [bidding.marketplaces.upwork]
                daily_bid_cap = 7
                cover_letter = \"Hi {{{{ title }}}}\"
                [bidding.marketplaces.upwork.hourly]
                bid_fraction = \"0.9\""
            ),
            &[("BIDORCH__BIDDING__REQUIRED_SKILLS", "rust, go")],
        )
        .unwrap_or_else(|e| panic!("{}", crate::error::chain(&e)));
        let b = &s.bidding;
        assert_eq!(
            b.min_budget,
            Money::PerCurrency(
                [
                    ("USD".to_owned(), Decimal::from(500)),
                    ("JPY".to_owned(), Decimal::from(60_000))
                ]
                .into()
            )
        );
        assert_eq!(b.hourly.min_budget, Some(Money::from(25)));
        assert_eq!(b.max_posting_age, Some(Duration::from_secs(7200)));
        assert_eq!(b.min_client_rating, Some(4.5));
        assert_eq!(b.required_skills, ["rust", "go"]);
        let upwork = &b.marketplaces["upwork"];
        assert_eq!(upwork.daily_bid_cap, Some(7));
        assert_eq!(upwork.cover_letter.as_deref(), Some("Hi {{ title }}"));
        assert_eq!(
            upwork.hourly.bid_fraction,
            Some(Fraction(Decimal::new(9, 1)))
        );
        // `config check` prints it back as TOML.
        let printed = toml::to_string(&s).unwrap();
        assert!(
            printed.contains("[bidding.marketplaces.upwork.hourly]"),
            "{printed}"
        );
    }

    #[test]
    fn environment_overrides_reach_a_marketplace_section() {
        let s = load(
            UPWORK,
            &[
                ("BIDORCH__BIDDING__MARKETPLACES__UPWORK__MIN_BUDGET", "300"),
                ("BIDORCH__BIDDING__MIN_CLIENT_RATING", "4.2"),
                ("BIDORCH__BIDDING__REQUIRE_PAYMENT_VERIFIED", "true"),
            ],
        )
        .unwrap_or_else(|e| panic!("{}", crate::error::chain(&e)));
        assert_eq!(
            s.bidding.marketplaces["upwork"].min_budget,
            Some(Money::from(300))
        );
        assert_eq!(s.bidding.min_client_rating, Some(4.2));
        assert!(s.bidding.require_payment_verified);
    }

    #[test]
    fn bad_bidding_values_stop_loading_naming_the_key() {
        let cases = [
            (
                "[bidding]\ncover_letter = \"{{ title\"",
                "bidding.cover_letter",
            ),
            (
                "[bidding]\ncover_letter = \"{title}\"",
                "bidding.cover_letter",
            ),
            ("[bidding]\nbid_fraction = \"2\"", "bidding.bid_fraction"),
            ("[bidding]\nmin_budget = 1.5", "bidding.min_budget"),
            (
                "[bidding.marketplaces.guru]\ndaily_bid_cap = 1",
                "bidding.marketplaces.guru",
            ),
            ("[bidding]\nunknown_rule = 1", "unknown_rule"),
        ];
        for (toml, key) in cases {
            let err = crate::error::chain(&load(toml, &[]).unwrap_err());
            assert!(err.contains(key), "{toml}: {err}");
        }
    }
}
